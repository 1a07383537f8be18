"""Third-party identifiers (email addresses, phone numbers) on accounts.

This server binds none: it sends no email or SMS and talks to no identity server, and it
says so in the `m.3pid_changes` capability. The endpoints still answer as the spec has a
server without the medium answer, so clients show a clear reason instead of an unknown
endpoint: asking for a validation token gets 400 `M_THREEPID_MEDIUM_NOT_SUPPORTED` (once
the request is well formed), adding an identifier finds no validated session
(`M_THREEPID_AUTH_FAILED`), binding through an identity server gets
`M_SERVER_NOT_TRUSTED`, and removing one (there are none) succeeds with
`id_server_unbind_result: no-support`.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.errors import Codes, MatrixError, bad_json, require_str
from homeserver.server import HomeServer

# The spec's grammar for client_secret.
CLIENT_SECRET = re.compile(r"[0-9a-zA-Z.=_-]{1,255}")
MEDIA = ("email", "msisdn")
# Where a validation token may be asked for: registering, adding to an account, resetting
# a password.
TOKEN_PURPOSES = ("register", "account/3pid", "account/password")


def _client_secret(body: dict[str, Any]) -> str:
    secret = require_str(body, "client_secret")
    if not CLIENT_SECRET.fullmatch(secret):
        raise MatrixError(400, Codes.INVALID_PARAM, "client_secret is not valid")
    return secret


def check_token_request(medium: str, body: dict[str, Any]) -> None:
    """The spec's request body for `…/{medium}/requestToken`."""
    _client_secret(body)
    attempt = body.get("send_attempt")
    if attempt is None:
        raise MatrixError(400, Codes.MISSING_PARAM, "Missing parameter: send_attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise bad_json("send_attempt must be an integer")
    if medium == "email":
        if "@" not in require_str(body, "email"):
            raise MatrixError(400, Codes.INVALID_PARAM, "email is not an email address")
    else:
        require_str(body, "country")
        require_str(body, "phone_number")
    for key in ("next_link", "id_server", "id_access_token"):
        if key in body and not isinstance(body[key], str):
            raise bad_json(f"{key} must be a string")


def not_supported(medium: str) -> MatrixError:
    what = "email addresses" if medium == "email" else "phone numbers"
    return MatrixError(400, Codes.THREEPID_MEDIUM_NOT_SUPPORTED, f"This server does not support {what}")


def setup(app: web.Application, hs: HomeServer) -> None:
    auth = hs.auth

    async def threepids(request: web.Request) -> web.Response:
        await auth.get_requester(request)
        return json_response({"threepids": []})

    def request_token(medium: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            check_token_request(medium, await read_json(request))
            raise not_supported(medium)

        return handler

    async def add(request: web.Request) -> web.Response:
        await auth.get_requester(request)
        body = await read_json(request)
        _client_secret(body)
        require_str(body, "sid")
        raise MatrixError(400, Codes.THREEPID_AUTH_FAILED, "No validated third-party identifier session")

    async def add_legacy(request: web.Request) -> web.Response:
        await auth.get_requester(request)
        creds = (await read_json(request)).get("three_pid_creds")
        if not isinstance(creds, dict):
            raise bad_json("three_pid_creds must be an object")
        raise MatrixError(
            403, Codes.THREEPID_AUTH_FAILED, "The third-party credentials could not be verified"
        )

    async def bind(request: web.Request) -> web.Response:
        await auth.get_requester(request)
        body = await read_json(request)
        _client_secret(body)
        for key in ("id_server", "id_access_token", "sid"):
            require_str(body, key)
        raise MatrixError(400, Codes.SERVER_NOT_TRUSTED, "This server does not use identity servers")

    async def remove(request: web.Request) -> web.Response:
        """/delete and /unbind: the account has no identifier to remove, and no identity
        server knows of one through this server."""
        await auth.get_requester(request)
        body = await read_json(request)
        if require_str(body, "medium") not in MEDIA:
            raise MatrixError(400, Codes.INVALID_PARAM, "medium must be email or msisdn")
        require_str(body, "address")
        if "id_server" in body and not isinstance(body["id_server"], str):
            raise bad_json("id_server must be a string")
        return json_response({"id_server_unbind_result": "no-support"})

    routes = [
        web.get(V3 + "/account/3pid", threepids),
        web.post(V3 + "/account/3pid", add_legacy),
        web.post(V3 + "/account/3pid/add", add),
        web.post(V3 + "/account/3pid/bind", bind),
        web.post(V3 + "/account/3pid/delete", remove),
        web.post(V3 + "/account/3pid/unbind", remove),
    ]
    for purpose in TOKEN_PURPOSES:
        for medium in MEDIA:
            routes.append(web.post(f"{V3}/{purpose}/{medium}/requestToken", request_token(medium)))
    app.router.add_routes(routes)
