"""Inbound federation routes: a separate aiohttp application served on the TLS listener.

Routes are thin: authenticate the X-Matrix header (every endpoint except the key and
version endpoints), parse, call one handler method, answer JSON. The body is read once and
the same bytes are verified and decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge.keys import KeyFetchError
from bridge.xmatrix import XMatrixParseError, parse_authorization, request_json, verify_request_signature
from homeserver import jsonutil
from homeserver.api.http import json_response
from homeserver.api.middleware import error_middleware
from homeserver.errors import Codes, MatrixError, missing_param
from homeserver.events import SignatureError
from homeserver.events.identifiers import is_valid_server_name
from homeserver.handlers.auth import hash_token
from homeserver.storage.openid import openid_store

if TYPE_CHECKING:
    from bridge.service import Federation

log = logging.getLogger(__name__)

FED_V1 = "/_matrix/federation/v1"
FED_V2 = "/_matrix/federation/v2"
SERVER_VERSION = "0.1.0"
MAX_FEDERATION_BODY = 16 * 1024 * 1024

Route = Callable[[web.Request, str, Any], Awaitable[Any]]


def create_federation_app(fed: Federation) -> web.Application:
    hs = fed.hs
    traced = hs.tracing.middleware()
    middlewares = [*([traced] if traced is not None else []), error_middleware, *fed.middlewares]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_FEDERATION_BODY)

    async def authenticate(request: web.Request) -> tuple[str, Any]:
        raw = await request.read()
        content: Any = None
        if raw:
            try:
                content = jsonutil.loads(raw)
            except ValueError:
                raise MatrixError(400, Codes.NOT_JSON, "Content not JSON") from None
        headers = request.headers.getall("Authorization", [])
        if not headers:
            raise MatrixError(401, Codes.UNAUTHORIZED, "Missing X-Matrix authorization")
        errors = []
        for header in headers:
            try:
                auth = parse_authorization(header)
            except XMatrixParseError as e:
                errors.append(str(e))
                continue
            if auth.destination is not None and auth.destination != hs.server_name:
                raise MatrixError(401, Codes.UNAUTHORIZED, "Request is for another destination")
            if not is_valid_server_name(auth.origin):
                raise MatrixError(401, Codes.UNAUTHORIZED, "Invalid origin")
            signed = request_json(request.method, request.raw_path, auth.origin, hs.server_name, content)
            signed["signatures"] = {auth.origin: {auth.key_id: auth.signature}}
            try:
                key = await fed.keyring.get_verify_key(auth.origin, auth.key_id, hs.clock.time_ms())
                verify_request_signature(signed, auth.origin, key)
            except (KeyFetchError, SignatureError, ValueError) as e:
                errors.append(str(e))
                continue
            await fed.queue.remote_up(auth.origin)
            return auth.origin, content
        raise MatrixError(401, Codes.UNAUTHORIZED, f"Invalid X-Matrix signature: {'; '.join(errors)}"[:300])

    def authed(fn: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            origin, content = await authenticate(request)
            result = await fn(request, origin, content)
            return result if isinstance(result, web.Response) else json_response(result)

        return handler

    def body_object(content: Any) -> dict[str, Any]:
        if not isinstance(content, dict):
            raise MatrixError(400, Codes.BAD_JSON, "Request body must be a JSON object")
        return content

    def query(request: web.Request, name: str) -> str:
        value = request.query.get(name)
        if value is None:
            raise missing_param(name)
        return value

    # Keys and version (unauthenticated) ------------------------------------------------------

    async def key_server(request: web.Request) -> web.Response:
        return json_response(fed.local_keys.key_response())

    async def key_query_post(request: web.Request) -> web.Response:
        try:
            body = jsonutil.loads(await request.read() or b"{}")
        except ValueError:
            raise MatrixError(400, Codes.NOT_JSON, "Content not JSON") from None
        wanted = body.get("server_keys") if isinstance(body, dict) else None
        if not isinstance(wanted, dict):
            raise MatrixError(400, Codes.BAD_JSON, "server_keys must be an object")
        out: list[dict[str, Any]] = []
        for server_name, keys in list(wanted.items())[:100]:
            minimum = 0
            if isinstance(keys, dict):
                for criteria in keys.values():
                    if isinstance(criteria, dict) and isinstance(criteria.get("minimum_valid_until_ts"), int):
                        minimum = max(minimum, criteria["minimum_valid_until_ts"])
            out.extend(await fed.keyring.notary_lookup(server_name, minimum))
        return json_response({"server_keys": out})

    async def key_query_get(request: web.Request) -> web.Response:
        minimum = int(request.query.get("minimum_valid_until_ts", "0") or 0)
        keys = await fed.keyring.notary_lookup(request.match_info["server_name"], minimum)
        return json_response({"server_keys": keys})

    async def version(request: web.Request) -> web.Response:
        return json_response({"server": {"name": "Sotto", "version": SERVER_VERSION}})

    # Authenticated routes ----------------------------------------------------------------------

    async def send_txn(request: web.Request, origin: str, content: Any) -> Any:
        body = body_object(content)
        return await fed.handler.on_transaction(origin, request.match_info["txn_id"], body)

    async def get_event(request: web.Request, origin: str, content: Any) -> Any:
        return await fed.handler.on_event(origin, request.match_info["event_id"])

    async def state_ids(request: web.Request, origin: str, content: Any) -> Any:
        return await fed.handler.on_state_ids(
            origin, request.match_info["room_id"], query(request, "event_id")
        )

    async def state(request: web.Request, origin: str, content: Any) -> Any:
        return await fed.handler.on_state(origin, request.match_info["room_id"], query(request, "event_id"))

    async def event_auth(request: web.Request, origin: str, content: Any) -> Any:
        mi = request.match_info
        return await fed.handler.on_event_auth(origin, mi["room_id"], mi["event_id"])

    async def backfill(request: web.Request, origin: str, content: Any) -> Any:
        starts = request.query.getall("v", [])
        if not starts:
            raise missing_param("v")
        try:
            limit = int(request.query.get("limit", "10"))
        except ValueError:
            raise MatrixError(400, Codes.INVALID_PARAM, "limit must be an integer") from None
        return await fed.handler.on_backfill(origin, request.match_info["room_id"], starts, limit)

    async def missing_events(request: web.Request, origin: str, content: Any) -> Any:
        return await fed.handler.on_get_missing_events(
            origin, request.match_info["room_id"], body_object(content)
        )

    async def make_join(request: web.Request, origin: str, content: Any) -> Any:
        mi = request.match_info
        versions = request.query.getall("ver", []) or ["1"]
        return await fed.membership.on_make_join(origin, mi["room_id"], mi["user_id"], versions)

    async def send_join(request: web.Request, origin: str, content: Any) -> Any:
        mi = request.match_info
        return await fed.membership.on_send_join(origin, mi["room_id"], mi["event_id"], body_object(content))

    async def make_leave(request: web.Request, origin: str, content: Any) -> Any:
        mi = request.match_info
        return await fed.membership.on_make_leave(origin, mi["room_id"], mi["user_id"])

    async def send_leave(request: web.Request, origin: str, content: Any) -> Any:
        mi = request.match_info
        return await fed.membership.on_send_leave(origin, mi["room_id"], mi["event_id"], body_object(content))

    async def make_knock(request: web.Request, origin: str, content: Any) -> Any:
        mi = request.match_info
        versions = request.query.getall("ver", []) or ["1"]
        return await fed.membership.on_make_knock(origin, mi["room_id"], mi["user_id"], versions)

    async def send_knock(request: web.Request, origin: str, content: Any) -> Any:
        mi = request.match_info
        return await fed.membership.on_send_knock(origin, mi["room_id"], mi["event_id"], body_object(content))

    async def invite(request: web.Request, origin: str, content: Any) -> Any:
        mi = request.match_info
        return await fed.membership.on_invite(origin, mi["room_id"], mi["event_id"], body_object(content))

    async def hierarchy(request: web.Request, origin: str, content: Any) -> Any:
        suggested_only = request.query.get("suggested_only", "false") == "true"
        return await fed.hierarchy.on_hierarchy(origin, request.match_info["room_id"], suggested_only)

    async def timestamp_to_event(request: web.Request, origin: str, content: Any) -> Any:
        ts, direction = query(request, "ts"), query(request, "dir")
        if not ts.lstrip("-").isdigit() or direction not in ("f", "b"):
            raise MatrixError(400, Codes.INVALID_PARAM, "ts must be an integer and dir f or b")
        room_id = request.match_info["room_id"]
        return await fed.timestamps.on_timestamp_to_event(origin, room_id, int(ts), direction == "f")

    async def query_profile(request: web.Request, origin: str, content: Any) -> Any:
        return await fed.handler.on_query_profile(query(request, "user_id"), request.query.get("field"))

    async def query_directory(request: web.Request, origin: str, content: Any) -> Any:
        return await fed.handler.on_query_directory(query(request, "room_alias"))

    openid = openid_store(hs.db)

    async def openid_userinfo(request: web.Request) -> web.Response:
        # Not X-Matrix signed: the caller is a third party holding a token the user gave it
        # (homeserver.api.openid). Guessing is held back by the unauthenticated rate limit.
        token = request.query.get("access_token")
        if token is None:
            raise MatrixError(401, Codes.MISSING_TOKEN, "Missing access_token")
        user_id = await openid.user_for(hash_token(token), hs.clock.time_ms())
        if user_id is None:
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Unknown or expired OpenID token")
        return json_response({"sub": user_id})

    routes = [
        web.get(FED_V1 + "/openid/userinfo", openid_userinfo),
        web.get("/_matrix/key/v2/server", key_server),
        web.get("/_matrix/key/v2/server/{key_id}", key_server),
        web.post("/_matrix/key/v2/query", key_query_post),
        web.get("/_matrix/key/v2/query/{server_name}", key_query_get),
        web.get(FED_V1 + "/version", version),
        web.put(FED_V1 + "/send/{txn_id}", authed(send_txn)),
        web.get(FED_V1 + "/event/{event_id}", authed(get_event)),
        web.get(FED_V1 + "/state_ids/{room_id}", authed(state_ids)),
        web.get(FED_V1 + "/state/{room_id}", authed(state)),
        web.get(FED_V1 + "/event_auth/{room_id}/{event_id}", authed(event_auth)),
        web.get(FED_V1 + "/backfill/{room_id}", authed(backfill)),
        web.post(FED_V1 + "/get_missing_events/{room_id}", authed(missing_events)),
        web.get(FED_V1 + "/make_join/{room_id}/{user_id}", authed(make_join)),
        web.put(FED_V2 + "/send_join/{room_id}/{event_id}", authed(send_join)),
        web.get(FED_V1 + "/make_leave/{room_id}/{user_id}", authed(make_leave)),
        web.put(FED_V2 + "/send_leave/{room_id}/{event_id}", authed(send_leave)),
        web.put(FED_V2 + "/invite/{room_id}/{event_id}", authed(invite)),
        web.get(FED_V1 + "/make_knock/{room_id}/{user_id}", authed(make_knock)),
        web.put(FED_V1 + "/send_knock/{room_id}/{event_id}", authed(send_knock)),
        web.get(FED_V1 + "/hierarchy/{room_id}", authed(hierarchy)),
        web.get(FED_V1 + "/timestamp_to_event/{room_id}", authed(timestamp_to_event)),
        web.get(FED_V1 + "/query/profile", authed(query_profile)),
        web.get(FED_V1 + "/query/directory", authed(query_directory)),
    ]
    for method, path, fn in fed.extra_routes:
        routes.append(web.route(method, path, authed(fn)))
    app.router.add_routes(routes)
    return app
