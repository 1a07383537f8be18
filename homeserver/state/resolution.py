"""State resolution v2 (room versions 10, 11) and v2.1 (room version 12)
(rooms/fragments/v2-state-res; rooms/v12 "State resolution").

Role: given the states after each of an event's prev_events, compute the one
state before it.

Invariants:
* Deterministic: the result depends only on the *set* of input state maps and
  the events' content, never on input order (orderings are total, the result
  map is sorted).
* The unconflicted state map always wins (algorithm step 5).
* v2 starts the iterative auth checks from the unconflicted state; v2.1 from
  the empty state and adds the conflicted state subgraph to the full
  conflicted set.
* Reading of "auth difference": an event counts as part of its own auth chain
  (as Synapse does), so unconflicted state never enters the full conflicted
  set merely because other events cite it.
* Rejected events: per the spec ("handled as usual") conflicted events are
  re-authorised whatever their ``rejected_reason``; only *auth events* that
  were rejected are never used as fallback auth (Synapse instead keeps
  previously rejected events out of state entirely).
* Cost: the whole auth DAG below the state sets is loaded into memory
  (batched per DAG level).  Fine for modest rooms; a chain-cover index would
  be the next step for very large ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.events.auth import AuthError, auth_types_for_event, check_auth
from homeserver.events.model import Event
from homeserver.events.room_versions import STATE_RES_V2_1, RoomVersion
from homeserver.state.auth_chain import EventFetcher, get_auth_chain, room_of
from homeserver.state.ordering import mainline_order, reverse_topological_power_order
from homeserver.state.types import EventSource, StateKey, StateMap

__all__ = ["EventSource", "StateKey", "StateMap", "get_auth_chain", "resolve_state"]

POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")


def _separate(state_sets: Sequence[StateMap]) -> tuple[StateMap, dict[StateKey, set[str]]]:
    """Split into the unconflicted map and, per conflicted key, its event IDs.
    A key missing from some state set is conflicted."""
    unconflicted: StateMap = {}
    conflicted: dict[StateKey, set[str]] = {}
    keys = set().union(*(s.keys() for s in state_sets))
    for key in keys:
        values = {s.get(key) for s in state_sets}
        if len(values) == 1 and None not in values:
            unconflicted[key] = next(iter(values))  # type: ignore[assignment]
        else:
            conflicted[key] = {v for v in values if v is not None}
    return unconflicted, conflicted


def _is_power_event(event: Event) -> bool:
    if not event.is_state():
        return False
    if event.type in ("m.room.power_levels", "m.room.join_rules"):
        return True
    return (
        event.type == "m.room.member"
        and event.membership in ("leave", "ban")
        and event.sender != event.state_key
    )


def _room_being_resolved(unconflicted: StateMap, state_ids: set[str], fetcher: EventFetcher) -> str | None:
    """The room of the (unconflicted) create event, else the most common room
    among the state events (ties broken by room ID, for determinism)."""
    create_id = unconflicted.get(("m.room.create", ""))
    create = fetcher.get(create_id) if create_id is not None else None
    if create is not None and room_of(create) is not None:
        return room_of(create)
    counts: dict[str, int] = {}
    for event_id in state_ids:
        event = fetcher.get(event_id)
        room_id = room_of(event) if event is not None else None
        if room_id is not None:
            counts[room_id] = counts.get(room_id, 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda r: (-counts[r], r))


async def _iterative_auth_checks(
    room_version: RoomVersion,
    event_ids: list[str],
    base: StateMap,
    fetcher: EventFetcher,
    create_event: Event | None,
) -> StateMap:
    state = dict(base)
    for event_id in event_ids:
        event = fetcher.get(event_id)
        if event is None or event.state_key is None:
            continue
        # Fallback: the event's own auth events, unless they were rejected.
        auth_map: dict[StateKey, Event] = {}
        for auth_id in event.auth_event_ids:
            auth_event = fetcher.get(auth_id)
            if (
                auth_event is not None
                and auth_event.state_key is not None
                and auth_event.rejected_reason is None
            ):
                auth_map[auth_event.state_key_tuple] = auth_event
        # Preferred: whatever the partially resolved state holds for each key.
        keys = auth_types_for_event(room_version, event.type, event.sender, event.state_key, event.content)
        await fetcher.fetch(state[k] for k in keys if k in state)
        for key in keys:
            state_event = fetcher.get(state[key]) if key in state else None
            if state_event is not None:
                auth_map[key] = state_event
        create = create_event if room_version.room_id_is_create_event_hash else None
        try:
            check_auth(event, auth_map, create, validate_auth_events=False)
        except AuthError:
            continue
        state[event.state_key_tuple] = event_id
    return state


async def resolve_state(
    room_version: RoomVersion, state_sets: Sequence[StateMap], source: EventSource
) -> StateMap:
    """Resolve ``state_sets`` with the algorithm of ``room_version``."""
    sets = [dict(s) for s in state_sets]
    if not sets:
        return {}
    unconflicted, conflicted = _separate(sets)
    if not conflicted:
        return dict(sorted(unconflicted.items()))

    conflicted_ids = set().union(*conflicted.values())
    all_state_ids = set().union(*(s.values() for s in sets))
    fetcher = EventFetcher(source)
    await fetcher.fetch(sorted(all_state_ids))
    room_id = _room_being_resolved(unconflicted, all_state_ids, fetcher)
    if room_id is not None:
        # From here on, events of any other room are treated as unknown.
        fetcher.pin_room(room_id)
    await fetcher.load_auth_closure(sorted(all_state_ids))

    # Full conflicted set = conflicted events + auth difference (+ subgraph).
    chains = [fetcher.closure(s.values(), include_starts=True) for s in sets]
    auth_difference = set[str]().union(*chains) - chains[0].intersection(*chains[1:])
    full_conflicted = conflicted_ids | auth_difference
    if room_version.state_res == STATE_RES_V2_1:
        full_conflicted |= fetcher.conflicted_subgraph(conflicted_ids)
    full_conflicted = {e for e in full_conflicted if fetcher.get(e) is not None}

    create_event: Event | None = None
    if room_version.room_id_is_create_event_hash and fetcher.room_id is not None:
        # v12: the create event is implied by the room ID, never cited.
        create_id = "$" + fetcher.room_id[1:]
        await fetcher.fetch([create_id])
        create_event = fetcher.get(create_id)

    # Step 1: power events and their auth ancestry within the full conflicted set.
    power_events = {e for e in full_conflicted if _is_power_event(fetcher.require(e))}
    selected = set(power_events)
    selected |= fetcher.closure(power_events, include_starts=False) & full_conflicted
    ordered_power = reverse_topological_power_order(selected, fetcher, create_event)

    # Step 2: iterative auth checks from the unconflicted (v2) or empty (v2.1) state.
    base: StateMap = {} if room_version.state_res == STATE_RES_V2_1 else dict(unconflicted)
    partial = await _iterative_auth_checks(room_version, ordered_power, base, fetcher, create_event)

    # Steps 3-4: everything else, in mainline order of the resolved power levels.
    remaining = full_conflicted - selected
    power_levels_id = partial.get(POWER_LEVELS_KEY)
    if power_levels_id is not None:
        await fetcher.load_auth_closure([power_levels_id])
    ordered_rest = mainline_order(remaining, power_levels_id, fetcher)
    resolved = await _iterative_auth_checks(room_version, ordered_rest, partial, fetcher, create_event)

    # Step 5: the unconflicted state map always wins.
    resolved.update(unconflicted)
    return dict(sorted(resolved.items()))
