"""Middlewares: Matrix JSON errors everywhere, CORS, and request metrics.

Every response — including unknown endpoints, wrong methods, oversized bodies
and internal errors — is well-formed Matrix JSON, because clients stall on HTML
error pages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter, Histogram

from homeserver.api.http import json_response
from homeserver.errors import Codes, MatrixError

log = logging.getLogger("sotto.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    # If-Match/If-None-Match and the ETag family: the QR sign-in rendezvous (MSC4108) from a browser.
    "Access-Control-Allow-Headers": (
        "X-Requested-With, Content-Type, Authorization, Date, If-Match, If-None-Match"
    ),
    "Access-Control-Expose-Headers": "Content-Disposition, ETag, Expires, Last-Modified",
}

REQUESTS = Counter("sotto_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "sotto_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def _error(status: int, errcode: str, message: str) -> web.Response:
    return json_response({"errcode": errcode, "error": message}, status=status)


@web.middleware
async def forwarded_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`listener.x_forwarded`: the client is the address the proxy in front appended last to
    X-Forwarded-For (earlier entries are whatever the client claimed)."""
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded:
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            request = request.clone(remote=last)
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS":
        resp: web.StreamResponse = web.Response(status=200)
        resp.headers.update(CORS_HEADERS)
        return resp
    start = time.perf_counter()
    try:
        resp = await handler(request)
    except MatrixError as e:
        resp = json_response(e.to_json(), status=e.status)
    except web.HTTPNotFound:
        resp = _error(404, Codes.UNRECOGNIZED, "Unrecognized request")
    except web.HTTPMethodNotAllowed:
        resp = _error(405, Codes.UNRECOGNIZED, "Method not allowed")
    except web.HTTPRequestEntityTooLarge:
        resp = _error(413, Codes.TOO_LARGE, "Request body too large")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = _error(e.status, Codes.UNKNOWN, e.reason or "Error")
    except Exception:
        # Details go to the log only; the client gets an opaque 500.
        log.exception("Internal error handling %s %s", request.method, _route_name(request))
        resp = _error(500, Codes.UNKNOWN, "Internal server error")
    if not resp.prepared:
        resp.headers.update(CORS_HEADERS)
    route = _route_name(request)
    REQUESTS.labels(request.method, route, str(resp.status)).inc()
    LATENCY.labels(request.method, route).observe(time.perf_counter() - start)
    return resp
