"""Thread subscriptions (MSC4306 and MSC4308, unstable, as Synapse 1.163 serves them behind
`experimental_features.msc4306_enabled`), with `thread_subscriptions.enabled`:

- GET/PUT/DELETE /_matrix/client/unstable/io.element.msc4306/rooms/{roomId}/thread/
  {threadRootId}/subscription: the subscription (`{"automatic": bool}`, 404 when not
  subscribed), subscribe (`{"automatic": "$cause"}` or `{}` for a manual subscription),
  unsubscribe; each `{}` (homeserver/handlers/thread_subscriptions.py);
- GET /_matrix/client/unstable/io.element.msc4308/thread_subscriptions?dir=b[&from][&to]
  [&limit]: the user's changes, newest first in pages of `limit` (at most 512), `from` a
  `ts<n>` token (`end` of the previous page, or the extension's `prev_batch`), `to` such a
  token or a sliding sync `pos`; `end` when there may be more.

It also turns on the default `postcontent` push rules and their condition (PushHandler), and
sliding sync's extension (homeserver/sync/sliding/thread_subscriptions.py). Off, none of this
exists: the paths are unknown endpoints (404 M_UNRECOGNIZED).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from homeserver.api.http import UNSTABLE, json_response, read_json
from homeserver.api.sliding_sync import SLIDING_SYNC_KEY
from homeserver.config_errors import ConfigError
from homeserver.errors import Codes, MatrixError, bad_json, invalid_param
from homeserver.handlers.cs_services import services
from homeserver.handlers.thread_subscriptions import (
    ThreadSubscriptionsHandler,
    changes_json,
    parse_token,
    token,
)
from homeserver.server import HomeServer
from homeserver.storage.thread_subscriptions import ThreadSubscriptionStore
from homeserver.sync.sliding.thread_subscriptions import ThreadSubscriptionsExtension

SUBSCRIPTION_PATH = UNSTABLE + "/io.element.msc4306/rooms/{room_id}/thread/{thread_root_id}/subscription"
PAGINATION_PATH = UNSTABLE + "/io.element.msc4308/thread_subscriptions"
# The pagination endpoint's default and largest page (Synapse's).
DEFAULT_LIMIT = 100
MAX_LIMIT = 512
THREAD_SUBSCRIPTIONS_KEY = web.AppKey("sotto.thread_subscriptions", ThreadSubscriptionsHandler)

_DOMAINLESS_ROOM_ID = re.compile(r"^[A-Za-z0-9\-_]{43}$")
_EVENT_ID_V3 = re.compile(r"^\$([a-zA-Z0-9-_]{43}|[a-zA-Z0-9+/]{43})$")


def _check_ids(room_id: str, root_id: str) -> None:
    """Synapse's checks of the path, before authentication: 400 M_INVALID_PARAM."""
    if not room_id.startswith("!"):
        raise invalid_param("Expected RoomID string to start with '!'")
    if ":" in room_id:
        if len(room_id[1:].split(":", 1)) != 2:
            raise invalid_param("Expected RoomID of the form '!localname:domain'")
    elif not _DOMAINLESS_ROOM_ID.match(room_id[1:]):
        raise invalid_param("Expected RoomID string to be valid urlsafe unpadded base64")
    if not root_id.startswith("$"):
        raise invalid_param("Invalid event ID")


def _automatic(body: dict[str, Any]) -> str | None:
    """The PUT body's `automatic`: absent or null for a manual subscription, else an event
    ID (`$local:domain`, or a v3+ one); anything else is 400 M_BAD_JSON (as Synapse)."""
    value = body.get("automatic")
    if value is None:
        return None
    if isinstance(value, str) and (
        (value.startswith("$") and len(value[1:].split(":", 1)) == 2) or _EVENT_ID_V3.match(value)
    ):
        return value
    raise bad_json("automatic must be an event ID")


def _stream_of_pos(raw: str) -> int | None:
    """The stream position of a sliding sync `pos` (`<instance>_<serial>_<stream>`)."""
    parts = raw.split("_")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return int(parts[2])


def setup(app: web.Application, hs: HomeServer) -> None:
    enabled = hs.config.thread_subscriptions.enabled
    if not isinstance(enabled, bool):
        raise ConfigError("thread_subscriptions.enabled must be true or false")
    if not enabled or THREAD_SUBSCRIPTIONS_KEY in app:
        return
    store = ThreadSubscriptionStore(hs.db)
    handler = app[THREAD_SUBSCRIPTIONS_KEY] = ThreadSubscriptionsHandler(
        store, hs.events, hs.messages, hs.notifier
    )
    # The default postcontent rules and their condition.
    services(app, hs).push.thread_subscriptions = store
    sliding = app.get(SLIDING_SYNC_KEY)
    if sliding is not None:
        sliding.extensions.thread_subscriptions = ThreadSubscriptionsExtension(store)
    auth = hs.auth

    async def get_subscription(request: web.Request) -> web.Response:
        room_id, root_id = request.match_info["room_id"], request.match_info["thread_root_id"]
        _check_ids(room_id, root_id)
        requester = await auth.get_requester(request)
        return json_response(await handler.get(requester.user_id, room_id, root_id))

    async def put_subscription(request: web.Request) -> web.Response:
        room_id, root_id = request.match_info["room_id"], request.match_info["thread_root_id"]
        _check_ids(room_id, root_id)
        automatic = _automatic(await read_json(request))
        requester = await auth.get_requester(request)
        await handler.subscribe(requester.user_id, room_id, root_id, automatic)
        return json_response({})

    async def delete_subscription(request: web.Request) -> web.Response:
        room_id, root_id = request.match_info["room_id"], request.match_info["thread_root_id"]
        _check_ids(room_id, root_id)
        requester = await auth.get_requester(request)
        await handler.unsubscribe(requester.user_id, room_id, root_id)
        return json_response({})

    async def paginate(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        query = request.query
        raw_limit = query.get("limit")
        limit = DEFAULT_LIMIT
        if raw_limit is not None:
            try:
                limit = int(raw_limit)
            except ValueError:
                raise invalid_param("Query parameter limit must be an integer") from None
            if limit < 0:
                raise invalid_param("Query parameter limit must be a positive integer.")
        limit = min(limit, MAX_LIMIT)
        direction = query.get("dir")
        if direction is None:
            raise MatrixError(400, Codes.MISSING_PARAM, "Missing string query parameter dir")
        if direction != "b":
            raise invalid_param("Query parameter 'dir' must be one of ['b']")
        if limit <= 0:
            raise invalid_param("limit must be greater than 0")
        raw_from, raw_to = query.get("from"), query.get("to")
        upto = hs.db.current_stream_id
        if raw_from is not None:
            # Backwards: `from` is the bound nearest the end of the stream (inclusive).
            parsed = parse_token(raw_from)
            if parsed is None:
                raise invalid_param("`from` is not a valid token")
            upto = parsed
        after = 0
        if raw_to is not None:
            # The bound nearest the start (exclusive): a token, or a sliding sync `pos`.
            parsed = parse_token(raw_to)
            if parsed is None:
                parsed = _stream_of_pos(raw_to)
            if parsed is None:
                raise invalid_param("`to` is not a valid token")
            after = parsed
        changes = await handler.changes(requester.user_id, after, upto, limit)
        out = changes_json(changes)
        if len(changes) == limit:
            out["end"] = token(changes[0].stream_id - 1)
        return json_response(out)

    app.router.add_routes(
        [
            web.get(SUBSCRIPTION_PATH, get_subscription),
            web.put(SUBSCRIPTION_PATH, put_subscription),
            web.delete(SUBSCRIPTION_PATH, delete_subscription),
            web.get(PAGINATION_PATH, paginate),
        ]
    )
