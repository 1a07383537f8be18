"""Room previews ("peeking"): GET /rooms/{roomId}/initialSync, a room's state and latest
messages in one answer, then GET /events?room_id=, a long-poll for what happens next.

The spec keeps both for peeking: clients (matrix-js-sdk, hence Element) preview a room the
user has not joined this way, which only world-readable rooms allow. Members get their
view too: the state they may see and the messages before they left, if they left.
"""

from __future__ import annotations

import time
from typing import Any

from homeserver.errors import missing_param
from homeserver.handlers.client_format import format_events
from homeserver.server import HomeServer
from homeserver.sync.filter import EventFilter
from homeserver.sync.tokens import pagination_token, parse_pagination_token

DEFAULT_LIMIT = 20
# Events per /events answer (the client asks again from its `end`).
MAX_EVENTS = 100


async def room_initial_sync(
    hs: HomeServer, user_id: str, device_id: str | None, room_id: str, limit: int = DEFAULT_LIMIT
) -> dict[str, Any]:
    # The same visibility as /messages and /state: 403 for a room the user cannot read.
    state = await hs.messages.room_state(user_id, room_id)
    page = await hs.messages.messages(
        user_id, device_id, room_id, None, None, "b", limit, EventFilter(), lazy_load_members=False
    )
    chunk = list(reversed(page["chunk"]))  # oldest first, as the spec's example
    out: dict[str, Any] = {
        "room_id": room_id,
        "state": state,
        # `start` pages further back (as /messages' `from` with dir=b); `end` is now.
        "messages": {"chunk": chunk, "start": page.get("end", page["start"]), "end": page["start"]},
        "presence": [],
    }
    membership = await hs.events.get_membership(room_id, user_id)
    if membership is not None:
        out["membership"] = membership[0]
        room_data = await hs.account_data.for_room(user_id, room_id)
        out["account_data"] = [{"type": t, "content": c} for t, c in room_data.items()]
    out["visibility"] = "public" if await hs.events.is_room_public(room_id) else "private"
    return out


async def room_events_since(
    hs: HomeServer, user_id: str, room_id: str | None, from_token: str | None, timeout_ms: int
) -> dict[str, Any]:
    """GET /events?room_id=: the room's events after `from_token` (or from now), waiting up
    to `timeout_ms` for some. Only the peeking form: a room must be named."""
    if room_id is None:
        raise missing_param("room_id (this server serves /events only for room previews)")
    window = await hs.messages.visible_window(room_id, user_id)
    after = parse_pagination_token(from_token) if from_token else hs.db.current_stream_id
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        upto = min(window.upper, hs.db.current_stream_id)
        found = await hs.events.room_events(
            room_id, after=after, upto=upto, limit=MAX_EVENTS, backwards=False
        )
        left = deadline - time.monotonic()
        if found or left <= 0 or hs.notifier.closing:
            break
        await hs.notifier.wait(user_id, [room_id], left)
        window = await hs.messages.visible_window(room_id, user_id)
    chunk = await format_events(hs.events, await hs.erasure.for_client(user_id, found), hs.clock.time_ms())
    end = found[-1].stream_id if found else max(after, upto)
    return {"chunk": chunk, "start": pagination_token(after), "end": pagination_token(end)}
