"""HTTP plumbing shared by every API module: JSON bodies, responses, paths.

Route modules stay thin: authenticate, parse, call one handler method, and
answer with `json_response`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver import jsonutil
from homeserver.errors import Codes, MatrixError, bad_json

CLIENT_PREFIX = "/_matrix/client"
# Both the current and the legacy path versions route to the same handler.
V3 = CLIENT_PREFIX + "/{_ver:(?:r0|v3)}"
V1 = CLIENT_PREFIX + "/{_ver:(?:v1)}"
UNSTABLE = CLIENT_PREFIX + "/unstable"


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=jsonutil.dumpb(data), status=status, content_type="application/json")


async def read_json(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """Parse the request body as a JSON object, with the spec's errors."""
    raw = await request.read()
    if not raw:
        if allow_empty:
            return {}
        raise MatrixError(400, Codes.NOT_JSON, "Request body is empty")
    try:
        body = jsonutil.loads(raw)
    except ValueError:
        raise MatrixError(400, Codes.NOT_JSON, "Content not JSON") from None
    if not isinstance(body, dict):
        raise bad_json("Request body must be a JSON object")
    return body


def query_int(
    request: web.Request, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, f"{name} must be an integer") from None
    if value < minimum:
        raise MatrixError(400, Codes.INVALID_PARAM, f"{name} must be >= {minimum}")
    if maximum is not None:
        value = min(value, maximum)
    return value


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    return raw.lower() in ("true", "1")
