"""Sending a redaction, for `PUT /rooms/{roomId}/redact/...` and the admin API's bulk job.

The auth rules let anyone in the room send a redaction; whether the server applies it is
its own check (power.can_redact): one's own events, or anyone's with the redact level. A
target this server does not know (or of another room) is sent for, as the spec allows.
"""

from __future__ import annotations

from typing import Any

from homeserver.errors import forbidden, not_found
from homeserver.events import Event
from homeserver.handlers.event_creation import EventCreator
from homeserver.handlers.power import can_redact
from homeserver.storage.events import EventStore, TxnInfo


async def send_redaction(
    events: EventStore,
    creator: EventCreator,
    room_id: str,
    sender: str,
    target: str,
    reason: str | None,
    txn: TxnInfo | None = None,
) -> Event:
    rv = await events.get_room_version(room_id)
    if rv is None:
        raise not_found("Unknown room")
    original = await events.get_event(target)
    if (
        original is not None
        and original.event.room_id == room_id
        and not await can_redact(events, room_id, sender, original.event.sender)
    ):
        raise forbidden("You may only redact your own events without the redact power level")
    content: dict[str, Any] = {"reason": reason} if reason is not None else {}
    if rv.updated_redaction_rules:
        content["redacts"] = target
    event, _ = await creator.create_and_send(
        room_id=room_id, type="m.room.redaction", sender=sender, content=content, txn=txn, redacts=target
    )
    return event
