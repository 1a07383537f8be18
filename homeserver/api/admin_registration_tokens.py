"""Registration tokens for server admins, in Synapse's admin API shape (its tools and the
synapse-admin web UI manage tokens this way):

    GET    /_synapse/admin/v1/registration_tokens[?valid=true|false]
    GET    /_synapse/admin/v1/registration_tokens/{token}
    POST   /_synapse/admin/v1/registration_tokens/new  {token? | length?, uses_allowed?, expiry_time?}
    PUT    /_synapse/admin/v1/registration_tokens/{token}  {uses_allowed?, expiry_time?}
    DELETE /_synapse/admin/v1/registration_tokens/{token}

A token's `pending` is always 0: a use is counted when a registration completes (and given
back if it then fails), never held while one is in progress.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from aiohttp import web

from homeserver.api.admin import V1, require_admin
from homeserver.api.http import json_response, read_json
from homeserver.errors import Codes, MatrixError, not_found
from homeserver.handlers.uia import valid_token_syntax
from homeserver.server import HomeServer
from homeserver.storage.accounts import RegistrationToken

PATH = V1 + "/registration_tokens"
DEFAULT_LENGTH = 16
ALPHABET = string.ascii_letters + string.digits + "._~-"


def token_json(t: RegistrationToken) -> dict[str, Any]:
    return {
        "token": t.token,
        "uses_allowed": t.uses_allowed,
        "pending": 0,
        "completed": t.completed,
        "expiry_time": t.expiry_ts,
    }


def _invalid(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, message)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def limits(body: dict[str, Any], now_ms: int) -> dict[str, int | None]:
    """`uses_allowed` and `expiry_time` of a request body, as stored columns."""
    out: dict[str, int | None] = {}
    if "uses_allowed" in body:
        uses = body["uses_allowed"]
        if uses is not None and (not _whole(uses) or uses < 0):
            raise _invalid("uses_allowed must be a non-negative integer or null")
        out["uses_allowed"] = uses
    if "expiry_time" in body:
        expiry = body["expiry_time"]
        if expiry is not None and (not _whole(expiry) or expiry < now_ms):
            raise _invalid("expiry_time must be an integer in the future or null")
        out["expiry_ts"] = expiry
    return out


def setup(app: web.Application, hs: HomeServer) -> None:
    accounts = hs.accounts

    async def known(token: str) -> RegistrationToken:
        found = await accounts.get_registration_token(token)
        if found is None:
            raise not_found(f"No such registration token: {token}")
        return found

    async def listing(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        raw = request.query.get("valid")
        if raw not in (None, "true", "false"):
            raise _invalid("valid must be true or false")
        valid = None if raw is None else raw == "true"
        found = await accounts.list_registration_tokens(valid, hs.clock.time_ms())
        return json_response({"registration_tokens": [token_json(t) for t in found]})

    async def create(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        body = await read_json(request, allow_empty=True)
        fields = limits(body, hs.clock.time_ms())
        token = body.get("token")
        if token is None:
            length = body.get("length", DEFAULT_LENGTH)
            if not _whole(length) or not 0 < length <= 64:
                raise _invalid("length must be an integer from 1 to 64")
            token = "".join(secrets.choice(ALPHABET) for _ in range(length))
        elif not isinstance(token, str) or not valid_token_syntax(token):
            raise _invalid("A token is 1-64 characters of A-Z a-z 0-9 . _ ~ -")
        if await accounts.get_registration_token(token) is not None:
            raise _invalid(f"Token already exists: {token}")
        await accounts.create_registration_token(token, fields.get("uses_allowed"), fields.get("expiry_ts"))
        return json_response(token_json(await known(token)))

    async def one(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response(token_json(await known(request.match_info["token"])))

    async def change(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        token = request.match_info["token"]
        fields = limits(await read_json(request, allow_empty=True), hs.clock.time_ms())
        if fields and not await accounts.update_registration_token(token, **fields):
            raise not_found(f"No such registration token: {token}")
        return json_response(token_json(await known(token)))

    async def remove(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        token = request.match_info["token"]
        if not await accounts.delete_registration_token(token):
            raise not_found(f"No such registration token: {token}")
        return json_response({})

    app.router.add_routes(
        [
            web.get(PATH, listing),
            web.post(PATH + "/new", create),
            web.get(PATH + "/{token}", one),
            web.put(PATH + "/{token}", change),
            web.delete(PATH + "/{token}", remove),
        ]
    )
