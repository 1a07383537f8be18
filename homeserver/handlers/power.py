"""Power-level questions the API asks before creating events (redact, publish, ...).

The auth rules decide what an event may do; these checks cover actions the rules
leave to the server, such as whether a redaction may be *applied*.
"""

from __future__ import annotations

from typing import Any

from homeserver.events import Event, get_named_level, get_power_level, get_required_level_for_event
from homeserver.storage.events import EventStore

_PL = ("m.room.power_levels", "")
_CREATE = ("m.room.create", "")


def level_of(user_id: str, state: dict[tuple[str, str], Event]) -> tuple[int | float, dict[str, Any]]:
    """(user's power level, power levels content) from the given state events."""
    pl = state.get(_PL)
    return get_power_level(user_id, state, state.get(_CREATE)), (pl.content if pl is not None else {})


async def user_level(events: EventStore, room_id: str, user_id: str) -> tuple[int | float, dict[str, Any]]:
    found = await events.get_current_state(room_id, [_PL, _CREATE])
    return level_of(user_id, {k: v.event for k, v in found.items()})


async def can_redact(events: EventStore, room_id: str, user_id: str, target_sender: str) -> bool:
    """A user may redact their own events, or anyone's with the redact level."""
    if user_id == target_sender:
        return True
    level, content = await user_level(events, room_id, user_id)
    return level >= get_named_level("redact", content, 50)


async def can_send_state(events: EventStore, room_id: str, user_id: str, event_type: str) -> bool:
    level, content = await user_level(events, room_id, user_id)
    return level >= get_required_level_for_event(event_type, True, content)
