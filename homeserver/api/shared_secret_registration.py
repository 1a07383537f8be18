"""Registration by shared secret, as Synapse's admin API has it, so that its
`register_new_matrix_user` script and the tools built on the same API create accounts here:

    GET  /_synapse/admin/v1/register    {"nonce": ...}
    POST /_synapse/admin/v1/register    {nonce, username, password, admin, displayname?,
                                         user_type?, mac}

`mac` is the hex HMAC-SHA1, keyed with `registration.shared_secret`, of the nonce, username,
password and "admin" or "notadmin" (then the user type, when given), joined by NUL bytes.
Without a shared secret configured, both answer 400.

A nonce carries its own expiry and a MAC over it, so any worker can check one another
handed out. Each is accepted once per process; a replay on another worker within the
minute could only ask for the same account again, which then exists (M_USER_IN_USE).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from aiohttp import web

from homeserver.api.http import json_response, read_json
from homeserver.errors import Codes, MatrixError, bad_json, forbidden
from homeserver.handlers.users import create_account
from homeserver.server import HomeServer

PATH = "/_synapse/admin/v1/register"
NONCE_LIFETIME_S = 60
MAX_FIELD = 512
# Synapse's user types; accepted (they are part of the MAC) but not stored.
USER_TYPES = ("support", "bot")


class Nonces:
    """Nonces that expire on their own and are checked without shared state."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"sotto nonce\x00" + secret.encode()).digest()
        self._used: dict[str, float] = {}

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, now: float | None = None) -> str:
        issued = time.time() if now is None else now
        body = f"{int(issued) + NONCE_LIFETIME_S}.{secrets.token_hex(16)}"
        return f"{body}.{self._sign(body)}"

    def take(self, nonce: str) -> bool:
        """Whether the nonce is one of ours, unexpired and not used here before."""
        body, _, mac = nonce.rpartition(".")
        expiry, _, _ = body.partition(".")
        now = time.time()
        if not expiry.isdigit() or int(expiry) < now or nonce in self._used:
            return False
        if not hmac.compare_digest(self._sign(body), mac):
            return False
        self._used = {n: t for n, t in self._used.items() if t >= now}
        self._used[nonce] = int(expiry)
        return True


def expected_mac(
    secret: str, nonce: str, username: str, password: str, admin: bool, user_type: str | None
) -> str:
    parts = [nonce, username, password, "admin" if admin else "notadmin"]
    if user_type:
        parts.append(user_type)
    return hmac.new(secret.encode(), "\x00".join(parts).encode(), hashlib.sha1).hexdigest()


def _field(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise bad_json(f"{key} must be specified as a string")
    if len(value) > MAX_FIELD or "\x00" in value:
        raise MatrixError(400, Codes.INVALID_PARAM, f"Invalid {key}")
    return value


def setup(app: web.Application, hs: HomeServer) -> None:
    secret = hs.config.registration.shared_secret
    nonces = Nonces(secret) if secret else None

    def enabled() -> Nonces:
        if nonces is None:
            raise MatrixError(400, Codes.UNKNOWN, "Shared secret registration is not enabled")
        return nonces

    async def get_nonce(request: web.Request) -> web.Response:
        return json_response({"nonce": enabled().issue()})

    async def register(request: web.Request) -> web.Response:
        issued = enabled()
        assert secret is not None
        body = await read_json(request)
        nonce = _field(body, "nonce")
        if not issued.take(nonce):
            raise MatrixError(400, Codes.UNKNOWN, "unrecognised nonce")
        username, password = _field(body, "username"), _field(body, "password")
        admin = body.get("admin", False)
        if not isinstance(admin, bool):
            raise bad_json("admin must be a boolean")
        user_type = body.get("user_type")
        if user_type is not None and user_type not in USER_TYPES:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid user type")
        displayname = body.get("displayname")
        if displayname is not None and not isinstance(displayname, str):
            raise bad_json("displayname must be a string")
        mac = _field(body, "mac")
        want = expected_mac(secret, nonce, username, password, admin, user_type)
        if not hmac.compare_digest(want.encode(), mac.encode()):
            raise forbidden("HMAC incorrect")
        user_id = await create_account(
            hs.accounts,
            hs.passwords,
            hs.server_name,
            username,
            password,
            hs.clock.time_ms(),
            admin=admin,
            displayname=displayname,
        )
        token, device_id = await hs.auth.create_session(user_id, None, None)
        return json_response(
            {"user_id": user_id, "access_token": token, "device_id": device_id, "home_server": hs.server_name}
        )

    app.router.add_routes([web.get(PATH, get_nonce), web.post(PATH, register)])
