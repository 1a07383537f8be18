"""Central request guards for the client API: path-parameter grammar and rate limits.

One middleware, applied to every matched route after routing and before the route's
handler, so API modules stay thin and do not each repeat these checks:

* **Input limits.** Every path parameter is at most 255 bytes and free of NUL; those
  naming identifiers (`room_id`, `user_id`, `alias`, `event_id`, `room_id_or_alias`)
  must follow the spec's grammar. Selected bodies (filters) have smaller size caps
  than the app-wide `limits.max_request_bytes`. Rejections are 400 `M_INVALID_PARAM`
  or 413 `M_TOO_LARGE`; JSON values that cannot be canonical (floats, integers beyond
  2**53) reaching event building become 400 `M_BAD_JSON` instead of a 500.
* **Storage exhaustion.** A full disk under the media store or the database is answered
  with 507 (`M_UNKNOWN`, "out of storage space") and one log line, not a 500 and a
  traceback; nothing acknowledged is affected and requests succeed again once space returns.
* **Rate limits.** A table maps (method, route) to the named limiters of
  `homeserver.ratelimit.RateLimits` charged for it, keyed by the requesting user.
  Server admins are exempt. Every 429 `M_LIMIT_EXCEEDED` leaving the app (also from
  limiters inside handlers, e.g. /login) gets a `Retry-After` header.

`setup_federation` puts the per-origin federation limits on the federation listener.

The requester is resolved here through `AuthHandler.get_requester`, which caches it on
the request, so the handler's own call costs nothing extra.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from sqlalchemy.exc import OperationalError

from homeserver import jsonutil
from homeserver.api.http import json_response
from homeserver.errors import Codes, MatrixError
from homeserver.events.canonical import CanonicalJsonError
from homeserver.events.identifiers import is_v12_room_id, is_valid_server_name, is_valid_user_id
from homeserver.handlers.auth import REQUESTER_KEY, AuthHandler, Requester
from homeserver.ratelimit import LimitExceeded, RateLimiter, RateLimits, retry_after_seconds
from homeserver.server import HomeServer
from homeserver.storage.ratelimit_overrides import RateLimitOverrides

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A full disk (or quota, or file size limit) is answered with 507, not a 500 and a traceback.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

RATE_LIMITS_KEY = web.AppKey("sotto.rate_limits", RateLimits)
RATE_LIMIT_OVERRIDES_KEY = web.AppKey("sotto.rate_limit_overrides", RateLimitOverrides)
# Users with their own message limiter at once (admins' overrides: a few bots).
MAX_CUSTOM_LIMITERS = 10_000

MAX_PATH_PARAM_BYTES = 255
MAX_IDENTIFIER_BYTES = 255
MAX_FILTER_BYTES = 64 * 1024

_C = "/_matrix/client/{_ver}"
_ROOM = _C + "/rooms/{room_id}"


# Identifier grammar (appendices "Identifier Grammar") -----------------------------------------


def _sized(value: str) -> bool:
    return len(value.encode("utf-8", "surrogatepass")) <= MAX_IDENTIFIER_BYTES


def _sigil_with_domain(value: str, sigil: str) -> bool:
    if not value.startswith(sigil) or not _sized(value):
        return False
    localpart, sep, server = value[1:].partition(":")
    return bool(sep and localpart) and is_valid_server_name(server)


def is_valid_room_id(value: str) -> bool:
    """`!opaque:server`, or the v12 `!<43-char hash>` form."""
    return is_v12_room_id(value) or _sigil_with_domain(value, "!")


def is_valid_room_alias(value: str) -> bool:
    return _sigil_with_domain(value, "#")


def is_valid_event_id(value: str) -> bool:
    """`$opaque:server` (v1, v2) or `$<base64 hash>` (v3+); only the sigil and size are fixed."""
    return value.startswith("$") and len(value) > 1 and _sized(value)


IDENTIFIER_CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {
    "room_id": (is_valid_room_id, "a room ID"),
    "user_id": (is_valid_user_id, "a user ID"),
    "alias": (is_valid_room_alias, "a room alias"),
    "event_id": (is_valid_event_id, "an event ID"),
    "room_id_or_alias": (lambda v: is_valid_room_id(v) or is_valid_room_alias(v), "a room ID or alias"),
    "room": (lambda v: is_valid_room_id(v) or is_valid_room_alias(v), "a room ID or alias"),
}


def check_path_params(match_info: web.UrlMappingMatchInfo) -> None:
    for name, value in match_info.items():
        if name.startswith("_"):
            continue
        if "\x00" in value or len(value.encode("utf-8", "surrogatepass")) > MAX_PATH_PARAM_BYTES:
            if name == "key" and "\x00" not in value:
                # A profile field's name (/profile/{userId}/{key}): the spec's own code.
                raise MatrixError(400, "M_KEY_TOO_LARGE", "Profile key is longer than 255 bytes")
            raise MatrixError(400, Codes.INVALID_PARAM, f"{name} is too long or contains NUL")
        check = IDENTIFIER_CHECKS.get(name)
        if check is not None and not check[0](value):
            raise MatrixError(400, Codes.INVALID_PARAM, f"{name} is not {check[1]}")


# Rate-limit table ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Charge:
    """Charge `limiter` (a field of RateLimits) per requesting user; `target` charges the
    invited user's bucket instead (read from the body's `user_id`, or createRoom's `invite`)."""

    limiter: str
    target: bool = False


_MESSAGES = (Charge("messages"),)
_JOINS = (Charge("joins"),)
_INVITES = (Charge("invites_sent"), Charge("invites_received", target=True))
_UPLOADS = (Charge("media_uploads"),)

RATE_LIMITED_ROUTES: dict[tuple[str, str], tuple[Charge, ...]] = {
    ("PUT", _ROOM + "/send/{event_type}/{txn_id}"): _MESSAGES,
    ("PUT", _ROOM + "/state/{event_type}"): _MESSAGES,
    ("PUT", _ROOM + "/state/{event_type}/"): _MESSAGES,
    ("PUT", _ROOM + "/state/{event_type}/{state_key}"): _MESSAGES,
    ("PUT", _ROOM + "/redact/{event_id}/{txn_id}"): _MESSAGES,
    ("POST", _C + "/join/{room_id_or_alias}"): _JOINS,
    ("POST", _ROOM + "/join"): _JOINS,
    ("POST", _C + "/createRoom"): (*_JOINS, *_INVITES),
    ("POST", _ROOM + "/invite"): _INVITES,
    ("POST", "/_matrix/media/{_ver}/upload"): _UPLOADS,
    ("PUT", "/_matrix/media/{_ver}/upload/{server_name}/{media_id}"): _UPLOADS,
    ("POST", "/_matrix/media/v1/create"): _UPLOADS,
    ("POST", _C + "/keys/claim"): (Charge("key_claims"),),
    ("PUT", _C + "/sendToDevice/{event_type}/{txn_id}"): (Charge("to_device"),),
    ("PUT", _ROOM + "/typing/{user_id}"): (Charge("typing"),),
    ("POST", _ROOM + "/receipt/{receipt_type}/{event_id}"): (Charge("receipts"),),
    ("POST", _ROOM + "/read_markers"): (Charge("receipts"),),
}

# Membership targets named in the body must be user IDs (checked before any room lookup).
TARGET_ROUTES = frozenset(("POST", _ROOM + "/" + action) for action in ("invite", "kick", "ban", "unban")) | {
    ("POST", _C + "/createRoom")
}

# Bodies with a tighter cap than the app-wide limit.
BODY_LIMITS: dict[tuple[str, str], int] = {
    ("POST", _C + "/user/{user_id}/filter"): MAX_FILTER_BYTES,
}


def route_key(request: web.Request) -> tuple[str, str]:
    resource = request.match_info.route.resource
    return request.method, resource.canonical if resource is not None else ""


async def _invite_targets(request: web.Request) -> list[str]:
    """Whom this request targets: the body's `user_id`, or createRoom's `invite` list
    (best effort: the handler validates the body properly)."""
    try:
        body = jsonutil.loads(await request.read() or b"{}")
    except ValueError:
        return []
    if not isinstance(body, dict):
        return []
    if isinstance(body.get("user_id"), str):
        return [body["user_id"]]
    invites = body.get("invite")
    if isinstance(invites, list):
        return [i for i in invites if isinstance(i, str)]
    return []


async def _requester(auth: AuthHandler, request: web.Request) -> Requester:
    requester = await auth.get_requester(request, allow_guest=True)
    if requester.is_guest:
        # Do not leave a guest in the cache: the handler decides whether guests may call it.
        del request[REQUESTER_KEY]
    return requester


def _storage_full(request: web.Request, error: Exception) -> MatrixError:
    # One line, not a traceback: the operator needs to free space, not debug code.
    log.error("storage full while handling %s %s: %s", request.method, route_key(request)[1], error)
    return MatrixError(507, Codes.UNKNOWN, "The server is out of storage space; try again later")


def guard_middleware(hs: HomeServer, limits: RateLimits, overrides: RateLimitOverrides) -> Middleware:
    # Per user with an admin's override: (the override, the user's own message limiter).
    custom: dict[str, tuple[tuple[int, int], RateLimiter]] = {}

    def own_limiter(user_id: str, override: tuple[int, int]) -> RateLimiter:
        found = custom.get(user_id)
        if found is None or found[0] != override:
            if len(custom) > MAX_CUSTOM_LIMITERS:
                custom.clear()
            found = custom[user_id] = (override, RateLimiter(hs.clock, override[0], override[1]))
        return found[1]

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            await _before(request)
            return await handler(request)
        except OSError as e:
            if e.errno not in STORAGE_FULL_ERRNOS:
                raise
            raise _storage_full(request, e) from None
        except OperationalError as e:
            if "disk is full" not in str(e.orig):
                raise
            raise _storage_full(request, e) from None
        except CanonicalJsonError as e:
            # Client JSON that cannot go into an event (floats, integers beyond 2**53) is the
            # client's error, not ours; event building only finds out late.
            raise MatrixError(400, Codes.BAD_JSON, f"Bad JSON value: {e}") from None
        except MatrixError as e:
            if e.errcode != Codes.LIMIT_EXCEEDED:
                raise
            resp = json_response(e.to_json(), status=e.status)
            retry = e.extra.get("retry_after_ms")
            if isinstance(retry, int):
                resp.headers["Retry-After"] = str(retry_after_seconds(retry))
            return resp

    async def _before(request: web.Request) -> None:
        if request.match_info.http_exception is not None:
            return
        check_path_params(request.match_info)
        key = route_key(request)
        cap = BODY_LIMITS.get(key)
        if cap is not None and ((request.content_length or 0) > cap or len(await request.read()) > cap):
            raise MatrixError(413, Codes.TOO_LARGE, "Request body too large")
        if key in TARGET_ROUTES:
            for target in await _invite_targets(request):
                if not is_valid_user_id(target):
                    raise MatrixError(400, Codes.INVALID_PARAM, "user_id is not a valid user ID")
        charges = RATE_LIMITED_ROUTES.get(key)
        if charges and hs.config.rate_limits.enabled:
            await _rate_limit(request, charges)

    async def _rate_limit(request: web.Request, charges: tuple[Charge, ...]) -> None:
        requester = await _requester(hs.auth, request)
        if requester.is_admin:
            return
        if requester.appservice is not None:
            # A service's registration says whether its users are limited (bridges relay
            # whole networks through a few users; `rate_limited: false` lifts it).
            service = hs.appservices.get(requester.appservice)
            if service is not None and not service.rate_limited:
                return
        override = await overrides.get(requester.user_id)
        if override == (0, 0):
            return  # an admin lifted the user's limits (a bot, say)
        targets = await _invite_targets(request) if any(c.target for c in charges) else []
        costs: list[tuple[RateLimiter, str, float]] = []
        for charge in charges:
            limiter: RateLimiter = getattr(limits, charge.limiter)
            if override is not None and charge.limiter == "messages":
                limiter = own_limiter(requester.user_id, override)
            if charge.target:
                costs.extend((limiter, target, 1.0) for target in targets)
            elif charge.limiter == "invites_sent":
                # Several invites in one request (createRoom) cost one each, up to a full burst.
                if targets:
                    costs.append((limiter, requester.user_id, float(min(len(targets), limiter.burst))))
            else:
                costs.append((limiter, requester.user_id, 1.0))
        # Check every bucket before charging any, so a refused request costs nothing.
        waits = [w for lim, k, c in costs if (w := lim.retry_after_ms(k, c)) is not None]
        if waits:
            raise LimitExceeded(max(waits))
        for limiter, k, c in costs:
            limiter.charge(k, c)

    return guard


def setup(app: web.Application, hs: HomeServer) -> None:
    limits = RateLimits.from_config(hs.config.rate_limits, hs.clock)
    app[RATE_LIMITS_KEY] = limits
    overrides = app[RATE_LIMIT_OVERRIDES_KEY] = RateLimitOverrides(hs.db, hs.invalidations)
    app.middlewares.append(guard_middleware(hs, limits, overrides))


# Federation -------------------------------------------------------------------------------------


def _claimed_origin(request: web.Request) -> str | None:
    """The origin an X-Matrix header claims (unverified: the route verifies it)."""
    from bridge.xmatrix import XMatrixParseError, parse_authorization

    for header in request.headers.getall("Authorization", []):
        try:
            return parse_authorization(header).origin
        except XMatrixParseError:
            continue
    return None


def federation_middleware(limits: RateLimits) -> Middleware:
    """Per-origin limits on the federation listener.

    A request counts against its origin only once its signature has been accepted (any
    answer but 401), so nobody can spend another server's budget by naming it; requests
    that fail authentication count against the peer address instead, which bounds the key
    fetches a forger can make us do. A refused request is 429 with `retry_after_ms`.
    """

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = _claimed_origin(request)
        if origin is None:
            return await handler(request)
        address = request.remote or ""
        waits = [
            w
            for w in (
                limits.federation_origin.retry_after_ms(origin),
                limits.federation_unauthenticated.retry_after_ms(address),
            )
            if w is not None
        ]
        if waits:
            retry = max(waits)
            log.info("rate limited federation request from %s (%s)", origin, address)
            resp = json_response(LimitExceeded(retry).to_json(), status=429)
            resp.headers["Retry-After"] = str(retry_after_seconds(retry))
            return resp
        authenticated = True
        try:
            response = await handler(request)
            authenticated = response.status != 401
            return response
        except MatrixError as e:
            authenticated = e.status != 401
            raise
        finally:
            if authenticated:
                limits.federation_origin.charge(origin)
            else:
                limits.federation_unauthenticated.charge(address)

    return limit


def setup_federation(app: web.Application, hs: HomeServer) -> None:
    """Install the federation limits on the federation listener (after `bridge.service.setup`)."""
    from bridge.service import FEDERATION_KEY

    if FEDERATION_KEY not in app or not hs.config.rate_limits.enabled:
        return
    app[FEDERATION_KEY].middlewares.append(federation_middleware(app[RATE_LIMITS_KEY]))
