"""The plain types of stored events, shared by EventStore and its mixins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.events import Event

StateKey = tuple[str, str]


@dataclass(slots=True)
class StoredEvent:
    """An event as read back for clients: the PDU plus server-side metadata."""

    event: Event
    stream_id: int
    unsigned: dict[str, Any]
    txn_id: str | None
    device_id: str | None
    redacted_by: str | None


@dataclass(slots=True)
class TxnInfo:
    user_id: str
    device_id: str
    txn_id: str
