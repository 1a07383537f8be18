"""Application services in the Client-Server API: `POST /v1/appservice/{id}/ping`, and
the sender that pushes events to the configured services (a background service)."""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from homeserver.api.http import V1, json_response, read_json
from homeserver.appservice.accounts import appservice_of
from homeserver.appservice.sender import AppServiceSender
from homeserver.errors import Codes, MatrixError, bad_json
from homeserver.server import HomeServer

PING_PATH = "/_matrix/app/v1/ping"
PING_TIMEOUT_S = 15.0
# The service's answer to a failed ping is quoted back to it, up to this many bytes.
MAX_QUOTED_BYTES = 4096


def setup(app: web.Application, hs: HomeServer) -> None:
    queries = hs.appservice_queries
    if queries is not None:
        # Stopped after the sender (in reverse order), which sends through it.
        hs.background.append(queries)
        hs.background.append(AppServiceSender(hs, queries))

    async def ping(request: web.Request) -> web.Response:
        service = appservice_of(hs, request)
        if service.id != request.match_info["service_id"]:
            raise MatrixError(403, Codes.FORBIDDEN, "This token belongs to another application service")
        if service.url is None or queries is None:
            raise MatrixError(400, "M_URL_NOT_SET", "The application service has no URL")
        body = await read_json(request, allow_empty=True)
        txn_id = body.get("transaction_id")
        if txn_id is not None and not isinstance(txn_id, str):
            raise bad_json("transaction_id must be a string")
        payload = {} if txn_id is None else {"transaction_id": txn_id}
        started = time.monotonic()
        try:
            status, answer = await queries.call(
                service, "POST", PING_PATH, timeout=PING_TIMEOUT_S, body=payload
            )
        except TimeoutError:
            raise MatrixError(504, "M_CONNECTION_TIMEOUT", "The application service did not answer") from None
        except aiohttp.ClientError:
            raise MatrixError(
                502, "M_CONNECTION_FAILED", "The application service could not be reached"
            ) from None
        if not 200 <= status < 300:
            error = MatrixError(502, "M_BAD_STATUS", "The application service answered with an error")
            quoted = answer[:MAX_QUOTED_BYTES].decode("utf-8", "replace")
            error.extra.update(status=status, body=quoted)
            raise error
        return json_response({"duration_ms": round((time.monotonic() - started) * 1000)})

    app.router.add_post(V1 + "/appservice/{service_id}/ping", ping)
