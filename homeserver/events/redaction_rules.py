"""When a redaction that passed the auth rules is applied (room versions 3 and later).

The auth rules accept every redaction; servers apply one only if its sender has the
redact level, or is on the same server as the redacted event's sender.
"""

from __future__ import annotations

from collections.abc import Mapping

from homeserver.events.auth_base import get_named_level, get_power_level
from homeserver.events.model import Event


def domain(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def redaction_applies(
    redaction_sender: str, target_sender: str, state: Mapping[tuple[str, str], Event]
) -> bool:
    """`state` holds at least the room's m.room.power_levels and m.room.create events."""
    if domain(redaction_sender) == domain(target_sender):
        return True
    pl = state.get(("m.room.power_levels", ""))
    level = get_power_level(redaction_sender, state, state.get(("m.room.create", "")))
    return level >= get_named_level("redact", pl.content if pl is not None else {}, 50)
