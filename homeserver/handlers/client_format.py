"""Turning stored PDUs into the Client-Server API's event format."""

from __future__ import annotations

from typing import Any

from homeserver.storage import sticky_events
from homeserver.storage.events import EventStore, StoredEvent

# Invite and knock previews show only these state events (stripped to type/state_key/sender/content).
STRIPPED_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)


def client_event(
    stored: StoredEvent,
    now_ms: int,
    *,
    device_id: str | None = None,
    include_room_id: bool = True,
    redacted_because: dict[str, Any] | None = None,
    sticky_until: int | None = None,
) -> dict[str, Any]:
    """ClientEvent / ClientEventWithoutRoomID. `device_id` is the requester's, for transaction_id.
    `sticky_until`: when a sticky event (MSC4354) stops being sticky, if it still is."""
    ev = stored.event
    out: dict[str, Any] = {
        "type": ev.type,
        "event_id": ev.event_id,
        "sender": ev.sender,
        "origin_server_ts": ev.origin_server_ts,
        "content": ev.content,
    }
    if include_room_id:
        out["room_id"] = ev.room_id
    if ev.state_key is not None:
        out["state_key"] = ev.state_key
    redacts = ev.redacts
    if redacts is not None and ev.type == "m.room.redaction":
        out["redacts"] = redacts
    sticky = ev.pdu.get(sticky_events.FIELD)
    if sticky is not None:
        out[sticky_events.FIELD] = sticky
    unsigned: dict[str, Any] = dict(stored.unsigned)
    unsigned["age"] = max(0, now_ms - ev.origin_server_ts)
    if stored.txn_id is not None and device_id is not None and stored.device_id == device_id:
        unsigned["transaction_id"] = stored.txn_id
    if stored.redacted_by is not None:
        unsigned.pop("prev_content", None)
        unsigned["redacted_because"] = redacted_because or {"event_id": stored.redacted_by}
    if sticky_until is not None and sticky_until > now_ms:
        unsigned[sticky_events.TTL_FIELD] = sticky_until - now_ms
    out["unsigned"] = unsigned
    return out


def remote_room_summary(stored: StoredEvent, key: str) -> list[dict[str, Any]]:
    """Stripped state a remote server sent with an invite or knock (kept in the event's
    `unsigned[key]`), for rooms this server holds no state of."""
    summary = (stored.event.pdu.get("unsigned") or {}).get(key)
    if not isinstance(summary, list):
        return []
    return [
        {k: e[k] for k in ("type", "state_key", "sender", "content") if k in e}
        for e in summary
        if isinstance(e, dict)
        and isinstance(e.get("type"), str)
        and isinstance(e.get("content"), dict)
        and e.get("type") != "m.room.member"
    ]


def stripped_state(stored: StoredEvent) -> dict[str, Any]:
    ev = stored.event
    return {"type": ev.type, "state_key": ev.state_key, "sender": ev.sender, "content": ev.content}


async def membership_preview(
    store: EventStore, room_id: str, own_event_id: str, summary_key: str
) -> list[dict[str, Any]]:
    """The stripped state an invited or knocking user sees: the room's preview state, or
    the summary its server sent with the invite or knock (`summary_key`: "invite_room_state"
    or "knock_room_state") when this server holds none, then the user's own member event."""
    state = await store.get_current_state(room_id, types=STRIPPED_STATE_TYPES)
    out = [stripped_state(s) for s in state.values()]
    own = await store.get_event(own_event_id)
    if own is None:
        return out
    if not out:
        out = remote_room_summary(own, summary_key)
    out.append(
        {
            **stripped_state(own),
            "event_id": own.event.event_id,
            "origin_server_ts": own.event.origin_server_ts,
        }
    )
    return out


async def format_events(
    store: EventStore,
    stored: list[StoredEvent],
    now_ms: int,
    *,
    device_id: str | None = None,
    include_room_id: bool = True,
) -> list[dict[str, Any]]:
    """Format a batch of events, fetching the redaction events of redacted ones in one query
    (and, if any are sticky, when they stop being sticky in another)."""
    redaction_ids = [s.redacted_by for s in stored if s.redacted_by]
    because: dict[str, dict[str, Any]] = {}
    if redaction_ids:
        found = await store.get_events(redaction_ids)
        because = {eid: client_event(s, now_ms) for eid, s in found.items()}
    sticky_ids = [s.event.event_id for s in stored if sticky_events.FIELD in s.event.pdu]
    until: dict[str, int] = {}
    if sticky_ids:
        until = await sticky_events.StickyEventStore(store.db).expiry_of(sticky_ids, now_ms)
    return [
        client_event(
            s,
            now_ms,
            device_id=device_id,
            include_room_id=include_room_id,
            redacted_because=because.get(s.redacted_by or ""),
            sticky_until=until.get(s.event.event_id) if until else None,
        )
        for s in stored
    ]
