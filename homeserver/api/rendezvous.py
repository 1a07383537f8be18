"""Rendezvous sessions (MSC4108), with `oauth.enabled`: the channel over which an existing
device signs a new one in by QR code (Element's "Link new device"; matrix-js-sdk's
MSC4108RendezvousSession). The devices encrypt what they exchange; the server only keeps
each session's latest payload, for a few minutes.

    POST   /_matrix/client/unstable/org.matrix.msc4108/rendezvous        create: {"url": ...}
    GET    …/rendezvous/{id}   the payload (304 when If-None-Match is its ETag)
    PUT    …/rendezvous/{id}   replace it (If-Match required: 412 M_CONCURRENT_WRITE if stale)
    DELETE …/rendezvous/{id}   end the session

No access token is needed (the new device has none yet): creation is rate-limited per address
and bounded in size and number.
"""

from __future__ import annotations

import secrets
from email.utils import formatdate

from aiohttp import web

from homeserver.api.http import UNSTABLE, json_response
from homeserver.api.register import client_address
from homeserver.errors import Codes, MatrixError
from homeserver.handlers.registration import login_limiter
from homeserver.ratelimit import LimitExceeded
from homeserver.server import HomeServer
from homeserver.storage.rendezvous import Rendezvous, RendezvousStore

PATH = UNSTABLE + "/org.matrix.msc4108/rendezvous"
TTL_MS = 5 * 60 * 1000
MAX_BODY = 16 * 1024
MAX_LIVE = 10_000
FEATURE = "org.matrix.msc4108"


def _headers(session: Rendezvous) -> dict[str, str]:
    return {
        "ETag": session.etag,
        "Expires": formatdate(session.expires_ts / 1000, usegmt=True),
        "Last-Modified": formatdate(session.modified_ts / 1000, usegmt=True),
        "Cache-Control": "no-store",
    }


def _new_etag() -> str:
    return secrets.token_urlsafe(12)


def _gone() -> MatrixError:
    return MatrixError(404, Codes.NOT_FOUND, "Rendezvous session not found or expired")


async def _payload(request: web.Request) -> str:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise MatrixError(413, Codes.TOO_LARGE, f"Payloads are limited to {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise MatrixError(413, Codes.TOO_LARGE, f"Payloads are limited to {MAX_BODY} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise MatrixError(400, Codes.BAD_JSON, "Payloads are text (UTF-8)") from None


def setup(app: web.Application, hs: HomeServer) -> None:
    if not hs.config.oauth.enabled:
        return
    store = RendezvousStore(hs.db)
    limiter = login_limiter(hs.config, hs.clock)
    clock = hs.clock

    async def create(request: web.Request) -> web.Response:
        limiter.check(client_address(request))
        body = await _payload(request)
        now = clock.time_ms()
        session_id = secrets.token_urlsafe(16)
        session = Rendezvous(body, _new_etag(), now, now + TTL_MS)
        if not await store.create(session_id, session, MAX_LIVE):
            raise LimitExceeded(60_000, "Too many rendezvous sessions")
        url = f"{hs.config.baseurl}{PATH}/{session_id}"
        resp = json_response({"url": url}, status=201)
        resp.headers.update(_headers(session))
        return resp

    async def read(request: web.Request) -> web.Response:
        session = await store.get(request.match_info["session_id"], clock.time_ms())
        if session is None:
            raise _gone()
        headers = _headers(session)
        if request.headers.get("If-None-Match") == session.etag:
            return web.Response(status=304, headers=headers)
        # Exactly "text/plain", no charset: matrix-js-sdk compares the header as a string.
        return web.Response(body=session.body.encode(), headers={**headers, "Content-Type": "text/plain"})

    async def write(request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        if_match = request.headers.get("If-Match")
        if not if_match:
            raise MatrixError(400, Codes.MISSING_PARAM, "If-Match is required")
        body = await _payload(request)
        now = clock.time_ms()
        etag = _new_etag()
        if not await store.replace(session_id, if_match, body, etag, now):
            if await store.get(session_id, now) is None:
                raise _gone()
            raise MatrixError(412, "M_CONCURRENT_WRITE", "The session changed since that ETag")
        session = await store.get(session_id, now)
        if session is None:
            raise _gone()
        return web.Response(status=202, headers=_headers(session))

    async def remove(request: web.Request) -> web.Response:
        if not await store.delete(request.match_info["session_id"]):
            raise _gone()
        return web.Response(status=204)

    session_path = PATH + "/{session_id}"
    app.router.add_routes(
        [
            web.post(PATH, create),
            web.get(session_path, read),
            web.put(session_path, write),
            web.delete(session_path, remove),
        ]
    )
