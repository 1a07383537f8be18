"""`sotto admin …`: the admin API from the command line.

    sotto admin login alice --password-stdin         # prints an access token for SOTTO_ADMIN_TOKEN
    export SOTTO_ADMIN_TOKEN=...                       # (or --token-file PATH)
    sotto admin server-version
    sotto admin users [--name TEXT] [--deactivated] [--from N] [--limit N]
    sotto admin user alice                             # localpart or full user ID
    sotto admin deactivate alice [--erase]
    sotto admin reset-password alice --password-stdin [--keep-devices]
    sotto admin lock alice | unlock alice             # refuse everything but logging out
    sotto admin suspend alice | unsuspend alice       # read-only: no joins, invites, messages
    sotto admin rooms [--search TEXT] [--order-by joined_members] [--from N] [--limit N]
    sotto admin room '!room:example.org'
    sotto admin delete-room '!room:example.org' [--no-purge]
    sotto admin redact-user spammer [--room ROOM]... [--reason TEXT] [--limit N] [--use-admin] [--wait]
    sotto admin quarantine --room ROOM | --user alice | --media mxc://server/id [--release]
    sotto admin make-room-admin '!room:example.org' [USER]     # the caller by default

The commands talk to the running server over its client listener (`public_baseurl`, else
the listener address), with an admin's access token: that server holds the caches and the
stream positions, so changes must go through it rather than straight into the database.
Tokens and passwords are read from the environment, a file or stdin, never from the
command line (where `ps` would show them). Output is the API's JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from homeserver.cli import CliError
from homeserver.config import Config, load_config

TOKEN_ENV = "SOTTO_ADMIN_TOKEN"
A1 = "/_synapse/admin/v1"
A2 = "/_synapse/admin/v2"
MODERATION = "/_matrix/client/v1/admin"
# action: (endpoint, body key, value)
MODERATION_ACTIONS = {
    "lock": ("lock", "locked", True),
    "unlock": ("lock", "locked", False),
    "suspend": ("suspend", "suspended", True),
    "unsuspend": ("suspend", "suspended", False),
}


class ApiError(CliError):
    """The server answered with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# With several workers behind a load balancer, a redaction's status is known to the worker
# that runs it only: a poll that reaches another one gets 404, and is asked again.
MAX_STATUS_MISSES = 30


def _user_id(user: str, server_name: str) -> str:
    return user if user.startswith("@") else f"@{user}:{server_name}"


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CliError(
            f"no admin access token: set {TOKEN_ENV} or pass --token-file (see `sotto admin login`)"
        )
    return token


def _password_from_stdin() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CliError("the password read from stdin is empty")
    return password


async def _call(
    config: Config,
    method: str,
    path: str,
    *,
    token: str | None,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session,
            session.request(method, config.baseurl + path, json=body, params=params, headers=headers) as resp,
        ):
            try:
                out = await resp.json(content_type=None)
            except ValueError:
                out = {"error": (await resp.text())[:200]}
            if resp.status != 200:
                errcode = out.get("errcode", "") if isinstance(out, dict) else ""
                message = out.get("error", "") if isinstance(out, dict) else ""
                raise ApiError(f"{method} {path}: {resp.status} {errcode} {message}".rstrip(), resp.status)
            return out
    except aiohttp.ClientError as e:
        raise CliError(f"cannot reach the server at {config.baseurl}: {e}") from None


def cmd_admin(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    action: str = args.action
    name = config.server_name
    params: dict[str, str] = {}
    body: dict[str, Any] | None = None
    method = "GET"
    if action == "login":
        login = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": _user_id(args.user, name)},
            "password": _password_from_stdin(),
            "initial_device_display_name": "sotto admin CLI",
        }
        out = asyncio.run(_call(config, "POST", "/_matrix/client/v3/login", token=None, body=login))
        print(out["access_token"])
        return
    if action == "server-version":
        path = A1 + "/server_version"
    elif action == "users":
        path = A2 + "/users"
        params = {
            "from": str(args.start),
            "limit": str(args.limit),
            "deactivated": str(args.deactivated).lower(),
        }
        if args.name:
            params["name"] = args.name
    elif action == "user":
        path = A2 + "/users/" + quote(_user_id(args.user, name), safe="")
    elif action == "deactivate":
        method, path, body = "POST", A1 + "/deactivate/" + quote(_user_id(args.user, name), safe=""), {}
        body["erase"] = args.erase
    elif action == "reset-password":
        path = A1 + "/reset_password/" + quote(_user_id(args.user, name), safe="")
        method, body = (
            "POST",
            {"new_password": _password_from_stdin(), "logout_devices": not args.keep_devices},
        )
    elif action in MODERATION_ACTIONS:
        endpoint, key, value = MODERATION_ACTIONS[action]
        method, body = "PUT", {key: value}
        path = f"{MODERATION}/{endpoint}/" + quote(_user_id(args.user, name), safe="")
    elif action == "rooms":
        path = A1 + "/rooms"
        params = {"from": str(args.start), "limit": str(args.limit), "order_by": args.order_by}
        if args.search:
            params["search_term"] = args.search
    elif action == "room":
        path = A1 + "/rooms/" + quote(args.room, safe="")
    elif action == "delete-room":
        method, path, body = (
            "DELETE",
            A1 + "/rooms/" + quote(args.room, safe=""),
            {"purge": not args.no_purge},
        )
    elif action == "redact-user":
        method, path = "POST", f"{A1}/user/{quote(_user_id(args.user, name), safe='')}/redact"
        body = {"rooms": args.rooms, "limit": args.limit, "use_admin": args.use_admin}
        if args.reason:
            body["reason"] = args.reason
    elif action == "quarantine":
        method, path = "POST", _quarantine_path(args, name)
    elif action == "make-room-admin":
        method, path = "POST", f"{A1}/rooms/{quote(args.room, safe='')}/make_room_admin"
        body = {"user_id": _user_id(args.user, name)} if args.user else {}
    else:  # pragma: no cover - argparse only offers the actions above
        raise CliError(f"unknown admin action {action}")
    token = _token(args)
    out = asyncio.run(_call(config, method, path, token=token, body=body, params=params))
    if action == "redact-user" and args.wait:
        out = asyncio.run(_wait_for_redaction(config, token, out["redact_id"], print_err))
    print(json.dumps(out, indent=2, sort_keys=True))


def print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _quarantine_path(args: argparse.Namespace, server_name: str) -> str:
    if args.media:
        server, _, media_id = args.media.removeprefix("mxc://").partition("/")
        if not server or not media_id:
            raise CliError(f"not an mxc:// URI: {args.media}")
        verb = "unquarantine" if args.release else "quarantine"
        return f"{A1}/media/{verb}/{quote(server, safe='')}/{quote(media_id, safe='')}"
    if args.release:
        raise CliError(
            "--release takes one item (--media): a room's or a user's media is released item by item"
        )
    if args.room:
        return f"{A1}/room/{quote(args.room, safe='')}/media/quarantine"
    return f"{A1}/user/{quote(_user_id(args.user, server_name), safe='')}/media/quarantine"


async def _wait_for_redaction(
    config: Config, token: str, redact_id: str, progress: Callable[[str], None], poll_s: float = 1.0
) -> Any:
    """Poll the redaction's status until it ends, saying how far it got meanwhile."""
    path = f"{A1}/user/redact_status/{quote(redact_id, safe='')}"
    misses = 0
    while True:
        try:
            status = await _call(config, "GET", path, token=token)
        except ApiError as e:
            misses += 1
            if e.status != 404 or misses > MAX_STATUS_MISSES:
                raise
            await asyncio.sleep(poll_s)
            continue
        misses = 0
        if status["status"] not in ("scheduled", "active"):
            return {"redact_id": redact_id, **status}
        progress(
            f"redaction {redact_id}: {status['status']}, {len(status['failed_redactions'])} failed so far"
        )
        await asyncio.sleep(poll_s)


def add_admin_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `sotto admin` and its actions on the `sotto` subcommand parser."""
    admin = sub.add_parser("admin", help="server administration through the admin API")
    actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION")
    auth = argparse.ArgumentParser(add_help=False, parents=[common])
    auth.add_argument(
        "--token-file", default=None, help=f"read the admin access token here (else ${TOKEN_ENV})"
    )

    def action(name: str, help: str, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, parents=parents, help=help)
        p.set_defaults(func=cmd_admin)
        return p

    p = action("login", "log in as an admin and print an access token", [common])
    p.add_argument("user", metavar="USER")
    p.add_argument(
        "--password-stdin", action="store_true", required=True, help="read the password from stdin"
    )

    action("server-version", "show the server version", [auth])

    p = action("users", "list users", [auth])
    p.add_argument("--name", default=None, help="only users whose ID or display name contains this")
    p.add_argument("--deactivated", action="store_true", help="include deactivated users")
    p.add_argument("--from", dest="start", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)

    p = action("user", "show one user", [auth])
    p.add_argument("user", metavar="USER", help="localpart or full user ID")

    p = action("deactivate", "deactivate a user: log out everywhere, leave all rooms", [auth])
    p.add_argument("user", metavar="USER")
    p.add_argument(
        "--erase",
        action="store_true",
        help="also erase the user: their profile goes, and their messages are shown redacted to "
        "anyone who was not in the room when they were sent and in the history other servers fetch",
    )

    p = action("reset-password", "set a user's password (read from stdin)", [auth])
    p.add_argument("user", metavar="USER")
    p.add_argument("--password-stdin", action="store_true", required=True)
    p.add_argument("--keep-devices", action="store_true", help="do not log the user's devices out")

    for verb, help in (
        ("lock", "lock a user: every request but logging out is refused until unlocked"),
        ("unlock", "unlock a user (their sessions work again)"),
        ("suspend", "suspend a user: they can read and leave, not join, invite, send or edit their profile"),
        ("unsuspend", "lift a user's suspension"),
    ):
        p = action(verb, help, [auth])
        p.add_argument("user", metavar="USER")

    p = action("rooms", "list rooms", [auth])
    p.add_argument("--search", default=None, help="only rooms whose name, alias or ID contains this")
    p.add_argument("--order-by", default="name")
    p.add_argument("--from", dest="start", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)

    p = action("room", "show one room", [auth])
    p.add_argument("room", metavar="ROOM_ID")

    p = action("delete-room", "remove every local user from a room and purge it", [auth])
    p.add_argument("room", metavar="ROOM_ID")
    p.add_argument("--no-purge", action="store_true", help="only remove users and aliases; keep the history")

    p = action("redact-user", "redact a user's messages in every room they were in (or --room)", [auth])
    p.add_argument("user", metavar="USER")
    p.add_argument("--room", dest="rooms", action="append", default=[], help="only this room (repeatable)")
    p.add_argument("--reason", default=None, help="shown to the rooms' members in each redaction")
    p.add_argument(
        "--limit", type=int, default=1000, help="how many of their newest events to look at per room"
    )
    p.add_argument("--use-admin", action="store_true", help="the admin sends the redactions, not the user")
    p.add_argument("--wait", action="store_true", help="wait until it is done and print the result")

    p = action("quarantine", "make media unavailable: one item, a room's or a user's", [auth])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--room", default=None, help="every item the room's messages point at")
    which.add_argument("--user", default=None, help="every item a local user uploaded")
    which.add_argument("--media", default=None, metavar="MXC", help="one item (mxc://server/id)")
    p.add_argument("--release", action="store_true", help="undo the quarantine of --media")

    p = action("make-room-admin", "give a local user a room's top power level", [auth])
    p.add_argument("room", metavar="ROOM", help="room ID or alias")
    p.add_argument("user", metavar="USER", nargs="?", default=None, help="default: the admin running this")
