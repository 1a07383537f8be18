"""The `sotto` command: run the server and do the operator's first-run chores.

    sotto generate-config --server-name example.org   # config/homeserver.yaml + signing key
    sotto migrate                                     # apply database migrations
    sotto register-user alice --password-stdin        # create an account
    sotto create-registration-token --uses 10         # invite-style registration
    sotto serve                                       # run the homeserver
    sotto port-db --to postgresql+asyncpg://...       # move the SQLite data to PostgreSQL

Every subcommand reads `--config` (default config/homeserver.yaml). Passwords
are read from stdin, never from the command line (where `ps` would show them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import secrets
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from homeserver.clock import Clock
from homeserver.config import Config, ConfigError, generate_config_yaml, load_config
from homeserver.errors import MatrixError
from homeserver.logs import setup_logging
from homeserver.storage.engine import Database
from homeserver.storage.migrate import migrate

DEFAULT_CONFIG = "config/homeserver.yaml"
DEFAULT_PORT = 8008

log = logging.getLogger("sotto")

T = TypeVar("T")


class CliError(Exception):
    """A failure reported to the operator as one line on stderr (exit status 1)."""


def _setup_logging(config: Config) -> None:
    setup_logging(config.log_level, config.log_format)


async def _with_database(config: Config, work: Callable[[Database], Awaitable[T]]) -> T:
    """Open the configured database, bring its schema up to date, run `work`, close it."""
    db = Database(config.database.url, config.base_dir)
    try:
        await migrate(db)
        return await work(db)
    finally:
        await db.close()


# Subcommands ------------------------------------------------------------------------------


def _client_tls(config: Config) -> ssl.SSLContext | None:
    """TLS for the client listener when `listener.tls_certificate_path` and `_private_key_path` are set."""
    cert, key = config.listener.tls_certificate_path, config.listener.tls_private_key_path
    if not cert and not key:
        return None
    if not cert or not key:
        raise CliError("listener: set both tls_certificate_path and tls_private_key_path, or neither")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.resolve_path(cert), config.resolve_path(key))
    return ctx


def cmd_serve(args: argparse.Namespace) -> None:
    from homeserver import workers
    from homeserver.app import HS_KEY, create_app

    config = load_config(args.config)
    _setup_logging(config)
    count = args.workers or config.workers.count
    config.workers.count = count
    if args.worker_index is not None:
        config.workers.index = args.worker_index
        config.workers.sockets = args.worker_sockets
    elif args.workers:
        config.workers.index = None  # supervising, whatever the config file says
    elif config.workers.index is not None:
        workers.check_worker_config(config, count)  # one of several started separately
    if count > 1 and config.workers.index is None:
        # The supervisor runs the workers (this same command with --worker-index) and serves nothing.
        # A process whose config names its index is one of several started separately.
        raise SystemExit(workers.supervise(args.config, config, count))
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        log.info("uvloop is not installed; using the default asyncio event loop")
    host, port = config.listener.bind_address, config.listener.port
    display_host = f"[{host}]" if ":" in host else host
    ssl_context = _client_tls(config)
    message = (
        f"Sotto is listening on {'https' if ssl_context else 'http'}://{display_host}:{port} — "
        "point your Matrix client at it (homeserver URL)"
    )

    def announce(_default: str) -> None:
        # Called by run_app once the socket is bound, so the line is true when it appears.
        print(message, flush=True)

    app = create_app(config)
    workers.setup(app, app[HS_KEY])
    app.on_startup.append(_freeze_startup_heap)  # after the lifecycle's startup (cleanup_ctx)
    web.run_app(
        app,
        host=host,
        port=port,
        print=announce,
        loop=loop,
        access_log=None,
        ssl_context=ssl_context,
        # Workers share the port; the kernel spreads connections over them.
        reuse_port=config.workers.index is not None,
    )


async def _freeze_startup_heap(_app: web.Application) -> None:
    """Leave everything alive after startup (modules, compiled statements, the schema) out
    of every later garbage collection. The full collections during startup walked 107-121k
    objects in 34-81 ms with the event loop stopped (gc callbacks, this machine); one in
    a running server would walk them all again, and now walks only what was allocated
    since."""
    gc.collect()
    gc.freeze()


def cmd_migrate(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    _setup_logging(config)

    async def done(_db: Database) -> None:
        return None

    asyncio.run(_with_database(config, done))
    print("Database is up to date.")


def _port_from_server_name(server_name: str) -> int:
    host, sep, port = server_name.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return int(port)
    return DEFAULT_PORT


def cmd_generate_config(args: argparse.Namespace) -> None:
    from homeserver.server import load_or_create_signing_key

    path = Path(args.config)
    if path.exists() and not args.force:
        raise CliError(f"{path} already exists; use --force to overwrite it")
    port = args.port or _port_from_server_name(args.server_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The file holds the registration shared secret: readable by its owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_config_yaml(args.server_name, port))
    config = load_config(path)
    key_path = config.resolve_path(config.signing_key_path)
    existed = os.path.exists(key_path)
    # An existing signing key is kept even with --force: other servers have cached it.
    load_or_create_signing_key(key_path)
    print(f"Wrote {path}")
    print(f"{'Kept the existing' if existed else 'Created a'} signing key at {key_path}")


def _localpart(user: str, server_name: str) -> str:
    if user.startswith("@"):
        localpart, _, domain = user[1:].partition(":")
        if domain != server_name:
            raise CliError(f"{user} is not a user of this server ({server_name})")
        return localpart
    return user


def cmd_register_user(args: argparse.Namespace) -> None:
    from homeserver.handlers.auth import PasswordHasher
    from homeserver.handlers.users import create_account
    from homeserver.storage.accounts import AccountStore

    config = load_config(args.config)
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CliError("the password read from stdin is empty")
    localpart = _localpart(args.user, config.server_name)

    async def register(db: Database) -> str:
        return await create_account(
            AccountStore(db),
            PasswordHasher(config.bcrypt_rounds),
            config.server_name,
            localpart,
            password,
            Clock().time_ms(),
            admin=args.admin,
        )

    try:
        user_id = asyncio.run(_with_database(config, register))
    except MatrixError as e:
        raise CliError(f"cannot create {args.user}: {e.message} ({e.errcode})") from None
    print(f"Created {'admin ' if args.admin else ''}user {user_id}")


def cmd_create_registration_token(args: argparse.Namespace) -> None:
    from homeserver.handlers.uia import valid_token_syntax
    from homeserver.storage.accounts import AccountStore

    config = load_config(args.config)
    token = args.token or secrets.token_urlsafe(18)
    if not valid_token_syntax(token):
        raise CliError("a token is 1-64 characters of A-Z a-z 0-9 . _ ~ -")
    if args.uses is not None and args.uses < 1:
        raise CliError("--uses must be at least 1")

    async def create(db: Database) -> None:
        await AccountStore(db).create_registration_token(token, args.uses, args.expiry_ms)

    asyncio.run(_with_database(config, create))
    if not (config.registration.enabled and config.registration.requires_token):
        print(
            "note: registration.enabled and registration.requires_token should both be true for tokens "
            "to be the way in",
            file=sys.stderr,
        )
    print(token)


def cmd_port_db(args: argparse.Namespace) -> None:
    from homeserver.port_db import PortError, port

    if args.source:
        source, base_dir = args.source, os.getcwd()
    else:
        config = load_config(args.config)
        source, base_dir = config.database.url, config.base_dir

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        asyncio.run(port(source, args.target, base_dir, resume=args.resume, say=say))
    except PortError as e:
        raise CliError(f"port-db: {e}") from None
    print(
        "Done. Keep the server stopped on SQLite: set database.url in the config to the PostgreSQL URL, "
        "then start Sotto."
    )


# Argument parsing --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sotto", description="Sotto, a lightweight Matrix homeserver.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default: {DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="run the homeserver")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes sharing the port (default: workers.count; >1 needs PostgreSQL and Redis)",
    )
    p.add_argument(
        "--worker-index",
        type=int,
        default=None,
        help="serve as this worker (0 to workers.count - 1) instead of workers.index, e.g. a pod's ordinal",
    )
    p.add_argument("--worker-sockets", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", parents=[common], help="apply database migrations")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("generate-config", parents=[common], help="write a first config and signing key")
    p.add_argument(
        "--server-name",
        default=f"localhost:{DEFAULT_PORT}",
        help="the server name in user IDs, e.g. example.org (default: localhost:8008)",
    )
    p.add_argument(
        "--port", type=int, default=None, help="listener port (default: the server name's port, else 8008)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing config file")
    p.set_defaults(func=cmd_generate_config)

    p = sub.add_parser("register-user", parents=[common], help="create a user account")
    p.add_argument("user", metavar="USER", help="localpart or full user ID")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from the first line of stdin",
    )
    p.add_argument("--admin", action="store_true", help="make the user a server admin")
    p.set_defaults(func=cmd_register_user)

    p = sub.add_parser(
        "create-registration-token",
        parents=[common],
        help="create a token for m.login.registration_token registration; prints it",
    )
    p.add_argument(
        "--uses", type=int, default=None, help="how many registrations it allows (default: unlimited)"
    )
    p.add_argument(
        "--expiry-ms",
        type=int,
        default=None,
        help="when it expires, as a Unix timestamp in milliseconds (default: never)",
    )
    p.add_argument("--token", default=None, help="use this token instead of a random one")
    p.set_defaults(func=cmd_create_registration_token)

    p = sub.add_parser(
        "port-db",
        parents=[common],
        help="copy the SQLite database into an empty PostgreSQL database (stop the server first)",
    )
    p.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="URL",
        help="the PostgreSQL database, e.g. postgresql+asyncpg://sotto@127.0.0.1/sotto "
        "(the password from PGPASSWORD or ~/.pgpass)",
    )
    p.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="URL",
        help="the SQLite database (default: database.url of the config)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted port: skip the tables it copied in full",
    )
    p.set_defaults(func=cmd_port_db)

    from homeserver.admin_cli import add_admin_parser

    add_admin_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CliError, ConfigError) as e:
        print(f"sotto: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
