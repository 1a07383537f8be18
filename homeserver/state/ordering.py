"""The two orderings of state resolution v2/v2.1 (rooms: "Reverse topological
power ordering", "Mainline ordering").

Role: turn sets of event IDs into the deterministic lists the iterative auth
checks consume.

Invariants:
* Both orderings are total: the final tie-breaker is the event ID, so the
  result never depends on set/dict iteration order or on input order.
* Power levels for the topological ordering are read from each event's *own*
  auth events (plus, in v12, the room's create event), never from resolved
  state.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection

from homeserver.events.auth import get_power_level
from homeserver.events.model import Event
from homeserver.state.auth_chain import EventFetcher

__all__ = ["mainline_order", "reverse_topological_power_order", "sender_power_level"]

POWER_LEVELS_KEY = ("m.room.power_levels", "")


def sender_power_level(event: Event, fetcher: EventFetcher, create_event: Event | None) -> int | float:
    """Sender's power level as seen by the event's own auth events."""
    auth_map = {}
    for auth_id in event.auth_event_ids:
        auth_event = fetcher.get(auth_id)
        if auth_event is not None and auth_event.state_key is not None:
            auth_map[auth_event.state_key_tuple] = auth_event
    create = create_event if event.room_version.room_id_is_create_event_hash else None
    return get_power_level(event.sender, auth_map, create)


def reverse_topological_power_order(
    event_ids: Collection[str], fetcher: EventFetcher, create_event: Event | None
) -> list[str]:
    """Kahn's algorithm over the auth DAG restricted to ``event_ids``,
    repeatedly emitting the smallest available event by (higher sender power
    first, then earlier origin_server_ts, then smaller event ID).  Auth events
    come before the events they authorise."""
    members = set(event_ids)
    parents: dict[str, set[str]] = {e: fetcher.nearest_ancestors_in(e, members) for e in members}
    children: dict[str, set[str]] = {e: set() for e in members}
    for event_id, ancestors in parents.items():
        for ancestor in ancestors:
            children[ancestor].add(event_id)

    def sort_key(event_id: str) -> tuple[float, int, str]:
        event = fetcher.require(event_id)
        return (-float(sender_power_level(event, fetcher, create_event)), event.origin_server_ts, event_id)

    pending = {e: len(p) for e, p in parents.items()}
    heap = [(sort_key(e), e) for e, count in pending.items() if count == 0]
    heapq.heapify(heap)
    ordered: list[str] = []
    while heap:
        _, event_id = heapq.heappop(heap)
        ordered.append(event_id)
        for child in children[event_id]:
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(heap, (sort_key(child), child))
    if len(ordered) != len(members):
        # Only possible with a cycle in the auth graph; append the rest in a
        # deterministic order rather than dropping them.
        ordered.extend(sorted(members - set(ordered), key=sort_key))
    return ordered


def _power_levels_parent(event_id: str, fetcher: EventFetcher) -> str | None:
    """The m.room.power_levels event among the auth events, if any."""
    for auth_id in fetcher.auth_ids(event_id):
        auth_event = fetcher.require(auth_id)
        if auth_event.type == POWER_LEVELS_KEY[0] and auth_event.state_key == POWER_LEVELS_KEY[1]:
            return auth_id
    return None


def mainline_order(
    event_ids: Collection[str], power_levels_id: str | None, fetcher: EventFetcher
) -> list[str]:
    """Sort by mainline position based on ``power_levels_id`` (greater
    position - i.e. older mainline ancestor - first; events whose chain never
    meets the mainline first of all), then origin_server_ts, then event ID."""
    mainline: dict[str, int] = {}
    current = power_levels_id
    while current is not None and current not in mainline and fetcher.get(current) is not None:
        mainline[current] = len(mainline)
        current = _power_levels_parent(current, fetcher)

    def position(event_id: str) -> float:
        seen: set[str] = set()
        # Start from e_1 (the event's own power levels parent), not e_0.
        current = _power_levels_parent(event_id, fetcher)
        while current is not None and current not in seen:
            if current in mainline:
                return mainline[current]
            seen.add(current)
            current = _power_levels_parent(current, fetcher)
        return math.inf

    def sort_key(event_id: str) -> tuple[float, int, str]:
        return (-position(event_id), fetcher.require(event_id).origin_server_ts, event_id)

    return sorted(event_ids, key=sort_key)
