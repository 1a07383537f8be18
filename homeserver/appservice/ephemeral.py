"""Ephemeral data for application services that ask for it (`receive_ephemeral: true`):
typing notifications and read receipts, in the `/sync` format with a `room_id`, sent in
a transaction's `ephemeral` list.

Receipts are read from the database by stream position, alongside the events, so every
worker's receipts reach the sender. Typing lives in memory: the sender's worker learns of
every change (its own, and other workers' through Redis) from `TypingHandler.observers`,
and sends a room's current typers once per change. Presence changes are read by stream
position too: a user's presence goes to a service that owns the user or is interested in
one of the rooms the user is joined to.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select

from homeserver.appservice.registration import AppService
from homeserver.handlers.presence import PresenceHandler
from homeserver.server import HomeServer
from homeserver.storage.presence import PresenceRow, PresenceStore
from homeserver.storage.schema import receipts

_PRIVATE = "m.read.private"
_SENT = ("m.read", _PRIVATE)


def typing_edu(hs: HomeServer, room_id: str) -> dict[str, Any]:
    return {"type": "m.typing", "room_id": room_id, "content": {"user_ids": hs.typing.typing_users(room_id)}}


async def receipts_between(hs: HomeServer, after: int, upto: int) -> dict[str, list[Any]]:
    """Read receipts written after `after` up to `upto`, by room (rows: receipt_type,
    user_id, thread_id, event_id, ts)."""
    c = receipts.c
    q = select(c.room_id, c.receipt_type, c.user_id, c.thread_id, c.event_id, c.ts).where(
        c.stream_id > after, c.stream_id <= upto, c.receipt_type.in_(_SENT)
    )
    by_room: dict[str, list[Any]] = defaultdict(list)
    async with hs.db.read() as conn:
        for row in await conn.execute(q.order_by(c.stream_id)):
            by_room[row[0]].append(row[1:])
    return by_room


def receipt_edu(service: AppService, room_id: str, rows: list[Any]) -> dict[str, Any] | None:
    """An m.receipt for the service; private receipts only of its own users (the spec)."""
    content: dict[str, Any] = {}
    for receipt_type, user_id, thread_id, event_id, ts in rows:
        if receipt_type == _PRIVATE and not service.owns_user(user_id):
            continue
        data: dict[str, Any] = {"ts": ts}
        if thread_id:
            data["thread_id"] = thread_id
        content.setdefault(event_id, {}).setdefault(receipt_type, {})[user_id] = data
    return {"type": "m.receipt", "room_id": room_id, "content": content} if content else None


async def presence_between(hs: HomeServer, after: int, upto: int) -> list[PresenceRow]:
    return await PresenceStore(hs.db).changed_between(after, upto)


def presence_edu(row: PresenceRow, now: int) -> dict[str, Any]:
    content = PresenceHandler._content(
        row.state, row.status_msg, row.last_active_ts, row.currently_active, now
    )
    return {"type": "m.presence", "sender": row.user_id, "content": content}
