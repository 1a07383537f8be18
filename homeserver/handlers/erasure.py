"""Erased users' events as their readers get them (Synapse's rule, synapse/visibility.py):
a client gets such an event pruned, as a redaction leaves it (homeserver/events/redaction.py),
unless the reader was joined to the room at the time; another server always gets it pruned
in the history it fetches (backfill, missing events, single events).

This runs after history visibility chose what a reader may see, and hides nothing itself:
it applies to the events a client reads as history (/sync timelines, v3 and sliding;
/messages, /context, /event, /relations, /threads and bundled aggregations, search, room
previews). State sections are left whole, as Synapse leaves them; so is a server admin's
review of a room (the admin API). Sticky sections leave erased users' sticky events out
altogether (homeserver/sync/sticky.py), as federation does (bridge/sticky.py). The stored
events, and every cache of them, are never changed: a pruned event is a copy.

Cost: on most servers nobody is erased, and `ErasedUsers.nobody` says so without a read or
a look at the events. Otherwise one set intersection over a batch's senders; only a batch
holding an erased user's event reads the reader's member events in that room, walked back
from the current one to the oldest such event.

"Joined at the event": the membership after the reader's latest member event positioned at
or before it in the stream. The reader's own member event counts the more joined of it
and the membership it replaced, except that a leave is never joined (as Synapse). Member
events further back than MAX_STEPS count as not joined: the event is then pruned, never
shown whole by mistake.
"""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.events import Event, redact
from homeserver.storage.erased_users import ErasedUsers
from homeserver.storage.events import EventStore, StoredEvent

MEMBER = "m.room.member"
# The reader's member events walked back per room, at most.
MAX_STEPS = 1_000
# What of `unsigned` a pruned event keeps (prev_content would show the old profile).
KEPT_UNSIGNED = ("replaces_state",)

# (stream position, membership) of one reader's member events, newest first.
History = list[tuple[int, str]]


def pruned_event(event: Event) -> Event:
    """A new Event: `event` pruned by its room version's redaction rules."""
    return Event(redact(event.pdu, event.room_version), event.room_version, event.event_id)


def pruned(stored: StoredEvent) -> StoredEvent:
    """A copy of `stored` whose event is pruned; `stored` itself is left as it is."""
    unsigned = {k: v for k, v in stored.unsigned.items() if k in KEPT_UNSIGNED}
    return StoredEvent(
        pruned_event(stored.event),
        stored.stream_id,
        unsigned,
        stored.txn_id,
        stored.device_id,
        stored.redacted_by,
    )


def joined_at(reader: str, stored: StoredEvent, history: History) -> bool:
    """Whether `reader`, whose member events are `history`, was joined at `stored`."""
    position = stored.stream_id
    older = [(p, m) for p, m in history if p <= position]
    if not older:
        return False
    latest_position, membership = older[0]
    event = stored.event
    if event.type == MEMBER and event.state_key == reader and latest_position == position:
        # The reader's own member event: the more joined of it and the one it replaced.
        before = older[1][1] if len(older) > 1 else "leave"
        if membership == "leave" and before in ("join", "invite"):
            return False
        return "join" in (membership, before)
    return membership == "join"


class ErasureFilter:
    def __init__(self, erased: ErasedUsers, events: EventStore) -> None:
        self.erased = erased
        self.events = events

    async def hidden(self, reader: str, stored: Sequence[StoredEvent]) -> set[str]:
        """The IDs of those events of `stored` that `reader` gets pruned."""
        if self.erased.nobody or not stored:
            return set()
        erased = await self.erased.among({s.event.sender for s in stored})
        if not erased:
            return set()
        by_room: dict[str, list[StoredEvent]] = {}
        for s in stored:
            # A redacted event is pruned already.
            if s.event.sender in erased and s.redacted_by is None:
                by_room.setdefault(s.event.room_id, []).append(s)
        out: set[str] = set()
        for room_id, found in by_room.items():
            history = await self._history(room_id, reader, min(s.stream_id for s in found))
            out.update(s.event.event_id for s in found if not joined_at(reader, s, history))
        return out

    async def for_client(self, reader: str, stored: list[StoredEvent]) -> list[StoredEvent]:
        """`stored` as `reader` gets it: erased users' events pruned unless the reader was
        joined at them (the list itself when nothing is pruned)."""
        hidden = await self.hidden(reader, stored)
        if not hidden:
            return stored
        return [pruned(s) if s.event.event_id in hidden else s for s in stored]

    async def for_server(self, events: list[Event]) -> list[Event]:
        """`events` as another server gets them: erased users' events pruned."""
        if self.erased.nobody or not events:
            return events
        erased = await self.erased.among({e.sender for e in events})
        if not erased:
            return events
        return [pruned_event(e) if e.sender in erased else e for e in events]

    async def _history(self, room_id: str, reader: str, floor: int) -> History:
        """The reader's member events in the room, newest first, back to the first one at
        or before `floor` (or to the first one of all, or MAX_STEPS)."""
        current = await self.events.get_membership(room_id, reader)
        out: History = []
        event_id = current[1] if current is not None else None
        for _ in range(MAX_STEPS):
            if event_id is None:
                break
            stored = await self.events.get_event(event_id)
            if stored is None:
                break
            out.append((stored.stream_id, stored.event.membership or "leave"))
            if stored.stream_id <= floor:
                break
            replaced = stored.unsigned.get("replaces_state")
            event_id = replaced if isinstance(replaced, str) else None
        # Newest first by position (a backfilled member event may sit out of chain order).
        out.sort(reverse=True)
        return out
