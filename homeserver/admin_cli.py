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
                raise CliError(f"{method} {path}: {resp.status} {errcode} {message}".rstrip())
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
    else:  # pragma: no cover - argparse only offers the actions above
        raise CliError(f"unknown admin action {action}")
    out = asyncio.run(_call(config, method, path, token=_token(args), body=body, params=params))
    print(json.dumps(out, indent=2, sort_keys=True))


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
    p.add_argument("--erase", action="store_true", help="also remove the display name and avatar")

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
