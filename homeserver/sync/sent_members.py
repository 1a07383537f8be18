"""Which member events each device's client already holds, so that lazy-loading `/sync`
leaves out the redundant ones (the spec's `include_redundant_members: false`, the default).

A lazy-loading sync adds the member event of every timeline sender to `state`. Without
this, an incremental sync of one message resent its sender's member event every time, and
that member event made the response carry a room summary too (one more read).

A member event counts as held only once the client has acknowledged the response that
carried it: it is recorded with that response's stream position, and skipped only by a sync
whose `since` is at or after it. A response that was lost, or a retry with an older token,
gets the member events again. A member's newer event has another ID, so it is sent. The
record lives in this process only: another worker, or a restart, sends them again
(redundant, which the spec allows).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from homeserver.events.auth_base import MEMBER
from homeserver.storage.event_types import StoredEvent

# Member events remembered per device (oldest dropped first): a client syncing many busy
# rooms just gets some member events again.
MAX_PER_DEVICE = 100
# Member events remembered in all: past this the devices that synced least recently are
# forgotten whole. Measured with tracemalloc: ~390 bytes for a device holding 7 (the event
# ID strings are the cached events' own).
MAX_ENTRIES = 500_000

DeviceKey = tuple[str, str | None]
# Member event ID -> stream position of the response that carried it.
Held = dict[str, int]


class SentMembers:
    def __init__(self, max_entries: int = MAX_ENTRIES, per_device: int = MAX_PER_DEVICE) -> None:
        self.max_entries = max_entries
        self.per_device = per_device
        # Least recently recorded device first.
        self._devices: OrderedDict[DeviceKey, Held] = OrderedDict()
        self._entries = 0

    def __len__(self) -> int:
        """The member events remembered, over all devices."""
        return self._entries

    def forget(self, user_id: str, device_id: str | None) -> None:
        """An initial sync: the client starts from nothing (a new login, or a cleared cache)."""
        entry = self._devices.pop((user_id, device_id), None)
        if entry is not None:
            self._entries -= len(entry)

    def held(self, user_id: str, device_id: str | None, event_id: str, since: int) -> bool:
        """Whether the client syncing from `since` already holds this member event."""
        entry = self._devices.get((user_id, device_id))
        if entry is None:
            return False
        sent = entry.get(event_id)
        return sent is not None and sent <= since

    def record(self, user_id: str, device_id: str | None, event_ids: Iterable[str], position: int) -> None:
        """Member events sent in a response whose next_batch is at `position`."""
        key = (user_id, device_id)
        entry = self._devices.get(key)
        for event_id in event_ids:
            if entry is None:
                entry = self._devices[key] = {}
            sent = entry.pop(event_id, None)
            # Sent before at an earlier position: the earlier acknowledgement counts.
            entry[event_id] = position if sent is None or sent > position else sent
            if sent is None:
                self._entries += 1
                if len(entry) > self.per_device:
                    del entry[next(iter(entry))]
                    self._entries -= 1
        if entry is None:
            return
        self._devices.move_to_end(key)
        while self._entries > self.max_entries and len(self._devices) > 1:
            _, oldest = self._devices.popitem(last=False)
            self._entries -= len(oldest)

    def not_held(
        self, user_id: str, device_id: str | None, since: int, events: list[StoredEvent]
    ) -> list[StoredEvent]:
        """`events` without the member events that the device syncing from `since` holds."""
        held = self.held
        return [
            s
            for s in events
            if s.event.type != MEMBER or not held(user_id, device_id, s.event.event_id, since)
        ]

    def remember(self, user_id: str, device_id: str | None, events: list[StoredEvent], position: int) -> None:
        """Record the member events among `events`, sent in a response at `position`."""
        sent = [s.event.event_id for s in events if s.event.type == MEMBER]
        if sent:
            self.record(user_id, device_id, sent, position)
