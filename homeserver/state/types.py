"""Shared types of the state package.

Role: the vocabulary every state-related module (and the storage layer that
feeds them) agrees on.

Invariants: a :data:`StateMap` maps ``(event_type, state_key)`` to an event
ID - never to an Event - so state maps are cheap to copy and compare.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from homeserver.events.model import Event

__all__ = ["EventSource", "StateKey", "StateMap"]

StateKey = tuple[str, str]
StateMap = dict[StateKey, str]


class EventSource(Protocol):
    """Where state resolution fetches events (and their auth events) from.

    Implementations return the events they have, including rejected ones
    (with ``rejected_reason`` set); unknown IDs are simply absent.
    """

    async def get_events(self, event_ids: Collection[str]) -> dict[str, Event]: ...
