"""`sotto-bot`: log a bot in, run a bot module, and script a Matrix account from the shell.

    sotto-bot login --homeserver URL --user @bot:example.org   # creates the store (asks the password)
    sotto-bot login --homeserver URL --oauth                    # or: approve the login in a browser
    sotto-bot run echo.py                                       # runs the Bot defined in echo.py
    sotto-bot send '!room:example.org' 'hello **world**'        # prints the event ID
    sotto-bot listen '!room:example.org' --json                 # one JSON object per line
    sotto-bot verify                                            # answer an emoji verification
    sotto-bot trust reset @user:example.org                     # accept a user's new identity
    sotto-bot backup restore                                    # sessions back from key backup

Every command takes `--store DIR` (default `$SOTTO_BOT_STORE` or `./bot-store`). One process uses
a store at a time (it is locked), so stop a running bot before scripting with its store.
Exit codes: 0 success, 1 failure (message on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from clients.backup import KeyBackup, KeyBackupError
from clients.bot import Bot, BotError
from clients.config import DEFAULT_STORE, BotConfig
from clients.context import Context
from clients.crosssigning import load_keys
from clients.oauth import DeviceCode, OAuthError
from clients.oauth_login import login_with_oauth
from clients.store import TRUST_FILE, StoreDir
from clients.trust import TrustState, forget_pin
from clients.verification import SasPrompt, Verifier

log = logging.getLogger("sotto-bot")


def _store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", help=f"the bot's store directory (default $SOTTO_BOT_STORE or {DEFAULT_STORE})"
    )


def store_of(args: argparse.Namespace) -> str:
    return str(args.store or os.environ.get("SOTTO_BOT_STORE") or DEFAULT_STORE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sotto-bot", description="Encrypted Matrix bots on matrix-nio.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (never message bodies)")
    sub = parser.add_subparsers(dest="command", required=True)

    login = sub.add_parser("login", help="log in and create the store (device, keys, cross-signing)")
    _store_arg(login)
    login.add_argument("--homeserver", required=True, help="e.g. https://matrix.example.org")
    login.add_argument("--user", help="the bot's user ID, @bot:example.org (with --oauth: a check)")
    login.add_argument(
        "--oauth",
        action="store_true",
        help="sign in through the server's OAuth 2.0 API: approve the printed code in a browser",
    )
    login.add_argument(
        "--client-uri", help="with --oauth: the client's web page shown when approving (https://…)"
    )
    login.add_argument(
        "--password-file", help="read the password from this file (else $SOTTO_BOT_PASSWORD or ask)"
    )
    login.add_argument("--token", help="use an existing access token instead of a password")
    login.add_argument("--device-name", default="sotto-bot")
    login.add_argument("--no-encryption", action="store_true", help="no E2EE (not recommended)")
    login.add_argument("--reset-cross-signing", action="store_true", help="replace the account's identity")
    login.add_argument(
        "--keep-master-key", action="store_true", help="keep the master private key in the store"
    )
    login.add_argument(
        "--key-backup", action="store_true", help="back up Megolm sessions; prints the recovery key"
    )
    login.add_argument(
        "--secret-storage", action="store_true", help="keep the private keys in secret storage (SSSS)"
    )
    login.add_argument(
        "--recovery-key-file", help="an existing bot, new store: take its keys back from secret storage"
    )

    run = sub.add_parser("run", help="run the Bot defined in a Python file")
    _store_arg(run)
    run.add_argument("file", help="a module that creates a Bot (named `bot` if it has several)")

    send = sub.add_parser("send", help="send a message and print its event ID")
    _store_arg(send)
    send.add_argument("room", help="room ID or #alias:server")
    send.add_argument("text", help="the message; markdown unless --plain ('-' reads stdin)")
    send.add_argument("--plain", action="store_true", help="no markdown formatting")
    send.add_argument("--notice", action="store_true", help="send as m.notice")

    listen = sub.add_parser("listen", help="print new messages in a room")
    _store_arg(listen)
    listen.add_argument("room", help="room ID or #alias:server")
    listen.add_argument("--json", action="store_true", help="one JSON object per line")
    listen.add_argument("--count", type=int, default=0, help="exit after this many messages")

    verify = sub.add_parser("verify", help="interactive emoji (SAS) verification of the bot's device")
    _store_arg(verify)
    verify.add_argument("--user", help="start a verification with this user (else wait for one)")
    verify.add_argument("--device", help="verify this device of --user (to-device messages)")
    verify.add_argument(
        "--room", help="verify --user (their identity) in this room, a DM with them, as Element does"
    )
    verify.add_argument("--timeout", type=float, default=300.0)
    verify.add_argument("--yes", action="store_true", help="accept matching emoji without asking (testing)")

    backup = sub.add_parser("backup", help="key backup: show the recovery key, or restore sessions")
    _store_arg(backup)
    backup.add_argument("action", choices=["key", "restore"])
    backup.add_argument(
        "--recovery-key-file", help="restore: read the recovery key from this file (else ask)"
    )

    trust = sub.add_parser("trust", help="show or reset trust-on-first-use pins")
    _store_arg(trust)
    trust.add_argument("action", choices=["list", "reset"])
    trust.add_argument("user", nargs="?", help="the user whose new identity to accept (reset)")
    return parser


# -- commands -----------------------------------------------------------------------------------


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file:
        return Path(args.password_file).read_text().rstrip("\n")
    env = os.environ.get("SOTTO_BOT_PASSWORD")
    if env:
        return env
    return getpass.getpass(f"Password for {args.user}: ")


async def _oauth_login(args: argparse.Namespace, store: StoreDir, out: TextIO) -> None:
    async def show(code: DeviceCode) -> None:
        where = code.verification_uri_complete or code.verification_uri
        print(
            f"To log the bot in, open {where}\n  and approve the code {code.user_code} "
            f"(within {code.expires_in // 60} minutes) …",
            file=out,
            flush=True,
        )

    store.lock()  # no second login into the same store meanwhile
    try:
        await login_with_oauth(
            store, args.homeserver, show, expected_user=args.user, client_uri=args.client_uri
        )
    except OAuthError as exc:
        raise BotError(f"OAuth login failed: {exc}") from None
    finally:
        store.unlock()


async def cmd_login(args: argparse.Namespace, out: TextIO) -> int:
    store = StoreDir(store_of(args))
    if store.load_credentials() is not None:
        print(f"{store.path} already holds a login; use another --store or remove it", file=sys.stderr)
        return 1
    if args.oauth and (args.token or args.password_file):
        print("--oauth takes no password or token", file=sys.stderr)
        return 2
    if not args.oauth and not args.user:
        print("--user is needed (or --oauth)", file=sys.stderr)
        return 2
    if args.oauth:
        await _oauth_login(args, store, out)
    password = None if args.token or args.oauth else _read_password(args)
    recovery_key = None
    if args.recovery_key_file:
        recovery_key = await asyncio.to_thread(lambda: Path(args.recovery_key_file).read_text().strip())
    bot = Bot(
        str(store.path),
        homeserver=args.homeserver,
        user_id=args.user,
        password=password,
        access_token=args.token,
        device_name=args.device_name,
        encryption=not args.no_encryption,
        keep_master_key=args.keep_master_key,
        reset_cross_signing=args.reset_cross_signing,
        key_backup=args.key_backup,
        secret_storage=args.secret_storage,
        recovery_key=recovery_key,
    )
    try:
        client = await bot.connect()
        print(f"logged in as {client.user_id}, device {client.device_id}", file=out)
        keys = load_keys(store)
        if keys is not None:
            print(f"cross-signing master key: {keys.master_public}", file=out)
        elif not args.no_encryption:
            print("cross-signing is not set up (see the log above)", file=out)
        if bot.secret_storage is not None and bot.secret_storage.recovery_key and not recovery_key:
            print(f"recovery key (keep it somewhere safe): {bot.secret_storage.recovery_key}", file=out)
        elif bot.backup is not None and bot.backup.recovery_key and not recovery_key:
            print(f"key backup recovery key (keep it somewhere safe): {bot.backup.recovery_key}", file=out)
    finally:
        await bot.close()
    return 0


def load_bot_module(path: str) -> Bot:
    """Import a bot file and return its Bot (the one named `bot`, or the only one)."""
    file = Path(path).resolve()
    spec = importlib.util.spec_from_file_location(f"sotto_bot_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise BotError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.parent))
    spec.loader.exec_module(module)
    named = getattr(module, "bot", None)
    if isinstance(named, Bot):
        return named
    bots = [value for value in vars(module).values() if isinstance(value, Bot)]
    if len(bots) != 1:
        raise BotError(f"{path} must define one Bot (found {len(bots)}); name it `bot`")
    return bots[0]


async def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    if args.store:
        os.environ["SOTTO_BOT_STORE"] = args.store  # for modules that use Bot.from_env()
    bot = load_bot_module(args.file)
    if args.store:
        bot.configure(store_path=args.store)
    await bot.run_async()
    return 0


async def _connected(store: str) -> Bot:
    bot = Bot(config=BotConfig.from_env(store_path=store))
    await bot.connect()
    await bot.sync_once()
    return bot


async def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    bot = await _connected(store_of(args))
    try:
        room_id = await bot.resolve_room(args.room)
        client = bot.require_client()
        if room_id not in client.rooms:
            await bot.join(room_id)
            await bot.sync_once()
        event_id = await bot.send_text(room_id, text, markdown=not args.plain, notice=args.notice)
        print(event_id, file=out)
    finally:
        await bot.close()
    return 0


def message_record(ctx: Context) -> dict[str, Any]:
    content = ctx.content
    record: dict[str, Any] = {
        "room_id": ctx.room_id,
        "event_id": ctx.event_id,
        "sender": ctx.sender,
        "origin_server_ts": ctx.event.server_timestamp,
        "type": ctx.event.source.get("type"),
        "msgtype": content.get("msgtype"),
        "body": ctx.body,
        "encrypted": ctx.encrypted,
    }
    if content.get("format") == "org.matrix.custom.html":
        record["formatted_body"] = content.get("formatted_body")
    if ctx.thread_root:
        record["thread_root"] = ctx.thread_root
    attachment = ctx.attachment
    if attachment is not None:
        record["file"] = {
            "name": attachment.filename,
            "mimetype": attachment.mimetype,
            "size": attachment.size,
        }
    return record


async def cmd_listen(args: argparse.Namespace, out: TextIO) -> int:
    bot = Bot(config=BotConfig.from_env(store_path=store_of(args)))
    wanted: dict[str, str] = {}
    seen = 0

    @bot.on_startup
    async def resolve() -> None:
        wanted["room_id"] = await bot.resolve_room(args.room)
        print(f"listening to {wanted['room_id']}", file=sys.stderr, flush=True)

    @bot.on_message
    async def show(ctx: Context) -> None:
        nonlocal seen
        if ctx.room_id != wanted.get("room_id"):
            return
        if args.json:
            out.write(json.dumps(message_record(ctx), ensure_ascii=False) + "\n")
        else:
            out.write(f"{ctx.sender}: {ctx.body}\n")
        out.flush()
        seen += 1
        if args.count and seen >= args.count:
            bot.request_stop()

    await bot.run_async()
    return 0


async def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    async def ask(prompt: SasPrompt) -> bool:
        print(prompt.describe(), file=out, flush=True)
        if args.yes:
            return True
        answer = await asyncio.to_thread(input, "Do they match what the other device shows? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    if (args.device or args.room) and not args.user:
        print("--device and --room need --user", file=sys.stderr)
        return 2
    if args.user and not (args.device or args.room):
        print("--user needs --device (to-device) or --room (in-room)", file=sys.stderr)
        return 2
    return await run_verification(
        Bot(config=BotConfig.from_env(store_path=store_of(args))),
        ask,
        args.user,
        args.device,
        args.timeout,
        out,
        room=args.room,
    )


async def run_verification(
    bot: Bot,
    confirm: Any,
    user: str | None,
    device: str | None,
    timeout: float,
    out: TextIO,
    room: str | None = None,
) -> int:
    verifier = Verifier(bot, confirm)
    task = asyncio.create_task(bot.serve())
    try:
        ready = asyncio.create_task(bot.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()
        if user and room:
            room_id = await bot.resolve_room(room)
            await verifier.request_in_room(room_id, user)
            print(f"asked {user} to verify in {room_id} …", file=out, flush=True)
        elif user and device:
            await verifier.start(user, device)
        elif bot.client is not None:
            print(
                f"waiting for a verification of {bot.client.user_id} / {bot.client.device_id} …",
                file=out,
                flush=True,
            )
        result = await asyncio.wait_for(verifier.results.get(), timeout)
    except TimeoutError:
        print("no verification completed in time", file=sys.stderr)
        return 1
    finally:
        await bot.stop()
        await asyncio.gather(task, return_exceptions=True)
    if result.verified:
        print(f"verified {result.user_id} / {result.device_id}", file=out)
        if result.master_key:
            print(f"signed the identity of {result.user_id} (master key {result.master_key})", file=out)
        return 0
    print(f"not verified: {result.reason}", file=sys.stderr)
    return 1


async def cmd_backup(args: argparse.Namespace, out: TextIO) -> int:
    store = StoreDir(store_of(args))
    if args.action == "key":
        key = KeyBackup.stored_recovery_key(store)
        if key is None:
            print("this store has no key backup (log in with --key-backup)", file=sys.stderr)
            return 1
        print(key, file=out)
        return 0
    if args.recovery_key_file:
        recovery_key = await asyncio.to_thread(lambda: Path(args.recovery_key_file).read_text().strip())
    else:
        recovery_key = await asyncio.to_thread(getpass.getpass, "Recovery key: ")
    bot = Bot(config=BotConfig.from_env(store_path=str(store.path)))
    try:
        await bot.connect()
        await bot.sync_once()
        count = await bot.restore_key_backup(recovery_key)
    except KeyBackupError as exc:
        print(f"sotto-bot: {exc}", file=sys.stderr)
        return 1
    finally:
        await bot.close()
    print(f"restored {count} sessions", file=out)
    return 0


async def cmd_trust(args: argparse.Namespace, out: TextIO) -> int:
    store = StoreDir(store_of(args))
    if args.action == "list":
        state = TrustState.from_json(store.read_json(TRUST_FILE))
        for user, master in sorted(state.pins.items()):
            print(f"{user}\tmaster {master}", file=out)
        for user, device in sorted(state.blocked):
            print(f"{user}\tblocked device {device}", file=out)
        return 0
    if not args.user:
        print("trust reset needs a user ID", file=sys.stderr)
        return 2
    store.lock()
    try:
        changed = forget_pin(store, args.user)
    finally:
        store.unlock()
    print(f"{'forgot' if changed else 'no pin for'} {args.user}", file=out)
    return 0


COMMANDS = {
    "login": cmd_login,
    "run": cmd_run,
    "send": cmd_send,
    "listen": cmd_listen,
    "verify": cmd_verify,
    "trust": cmd_trust,
    "backup": cmd_backup,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose
        else logging.WARNING
        if args.command in ("send", "listen")
        else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("nio").setLevel(logging.WARNING)
    try:
        return asyncio.run(COMMANDS[args.command](args, sys.stdout))
    except BotError as exc:
        print(f"sotto-bot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
