"""Property tests (hypothesis) for the pure event core: canonical JSON, redaction and
signatures, the authorization rules, and state resolution.

These check invariants over generated inputs rather than fixed vectors: what must hold for
*every* event and room, because a remote server can send any of them.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
from collections.abc import Collection
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeserver.events import (
    AuthError,
    CanonicalJsonError,
    Event,
    build_event,
    canonical_json,
    check_canonical,
    check_content_hash,
    compute_event_id,
    redact,
    verify_event_signature,
)
from homeserver.events.canonical import MAX_SAFE_INTEGER, MIN_SAFE_INTEGER
from homeserver.events.room_versions import RoomVersion, RoomVersions
from homeserver.events.testing import RoomSim, test_signing_key
from homeserver.state import StateMap, resolve_state

VERSIONS = [RoomVersions.V10, RoomVersions.V11, RoomVersions.V12]
ALICE, BOB, CAROL, EVE = "@alice:a.example", "@bob:b.example", "@carol:c.example", "@eve:e.example"

# SOTTO_PROPERTY_SCALE=10 for a longer local hunt; CI keeps the defaults (a few seconds).
SCALE = int(os.environ.get("SOTTO_PROPERTY_SCALE", "1"))
FAST = settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])

safe_ints = st.integers(MIN_SAFE_INTEGER, MAX_SAFE_INTEGER)
scalars = st.none() | st.booleans() | safe_ints | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


# Canonical JSON ---------------------------------------------------------------------------


@FAST
@given(json_values)
def test_canonical_json_matches_the_spec_definition(value: Any) -> None:
    # The appendix: UTF-8, keys sorted by code point, no insignificant whitespace.
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    encoded = canonical_json(value)
    assert encoded == expected
    assert json.loads(encoded) == value
    # Canonical JSON of canonical JSON is itself.
    assert canonical_json(json.loads(encoded)) == encoded
    check_canonical(value)


@FAST
@given(st.dictionaries(st.text(max_size=8), json_values, min_size=2, max_size=6), st.randoms())
def test_canonical_json_ignores_key_order(value: dict[str, Any], rnd: random.Random) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(value)


@FAST
@given(json_objects, st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
def test_strict_canonical_json_rejects_every_float(obj: dict[str, Any], number: float, key: str) -> None:
    obj = dict(obj)
    obj[key] = [number]
    with pytest.raises(CanonicalJsonError):
        check_canonical(obj)


@FAST
@given(st.integers(MAX_SAFE_INTEGER + 1) | st.integers(max_value=MIN_SAFE_INTEGER - 1))
def test_strict_canonical_json_rejects_unsafe_integers(number: int) -> None:
    with pytest.raises(CanonicalJsonError):
        check_canonical({"content": {"n": number}})


@FAST
@given(st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3))
def test_lone_surrogates_are_not_canonical(text: str) -> None:
    with pytest.raises(CanonicalJsonError):
        canonical_json({"body": text})


# Redaction and signatures -------------------------------------------------------------------

EVENT_TYPES = [
    "m.room.message",
    "m.room.member",
    "m.room.power_levels",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.topic",
    "m.room.redaction",
    "org.example.custom",
]


def _event(rv: RoomVersion, type_: str, content: dict[str, Any], state_key: str | None) -> dict[str, Any]:
    room_id = "!" + "a" * 43 if rv.room_id_is_create_event_hash else "!room:a.example"
    event = build_event(
        room_version=rv,
        room_id=room_id,
        type=type_,
        sender=ALICE,
        content=content,
        state_key=state_key,
        prev_event_ids=["$" + "p" * 43],
        auth_event_ids=["$" + "c" * 43] if not rv.room_id_is_create_event_hash else [],
        depth=2,
        origin_server_ts=1_000,
        server_name="a.example",
        signing_key=test_signing_key("a.example"),
    )
    return event.pdu


@FAST
@given(
    st.sampled_from(VERSIONS),
    st.sampled_from(EVENT_TYPES),
    json_objects,
    st.none() | st.text(max_size=10),
)
def test_redaction_invariants(
    rv: RoomVersion, type_: str, content: dict[str, Any], state_key: str | None
) -> None:
    pdu = _event(rv, type_, content, state_key)
    original = copy.deepcopy(pdu)
    pruned = redact(pdu, rv)
    assert pdu == original, "redact must not mutate its input"
    assert redact(pruned, rv) == pruned, "redaction is idempotent"
    assert set(pruned["content"]) <= set(pdu["content"])
    assert "unsigned" not in pruned
    # The event ID and the signatures cover the redacted form, so both survive redaction.
    event_id = compute_event_id(pdu, rv)
    assert compute_event_id(pruned, rv) == event_id
    verify_key = RoomSim.verify_key("a.example")
    verify_event_signature(pdu, "a.example", verify_key, rv)
    verify_event_signature(pruned, "a.example", verify_key, rv)
    assert check_content_hash(pdu)


@FAST
@given(st.sampled_from(VERSIONS), json_objects, st.text(min_size=1, max_size=8), json_values)
def test_tampered_content_fails_the_hash_but_keeps_id_and_signature(
    rv: RoomVersion, content: dict[str, Any], key: str, value: Any
) -> None:
    pdu = _event(rv, "m.room.message", content, None)
    tampered = copy.deepcopy(pdu)
    tampered["content"][key] = value
    if tampered["content"] == pdu["content"]:
        return
    # A server that relays a changed message cannot hide it: the content hash no longer
    # matches, so receivers redact it; the ID and signature stay valid (they cover only the
    # redacted form), which is why the hash check is mandatory.
    assert not check_content_hash(tampered)
    assert compute_event_id(tampered, rv) == compute_event_id(pdu, rv)
    verify_event_signature(tampered, "a.example", RoomSim.verify_key("a.example"), rv)


# The keys the redaction algorithm keeps (spec: rooms/v1 ... v10, "Redactions"); the signature
# covers these on purpose, so only other top-level keys must leave the signed form unchanged.
PROTECTED_TOP_LEVEL_KEYS = frozenset(
    {"event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures", "depth"}
    | {"prev_events", "auth_events", "origin_server_ts", "prev_state", "origin", "membership"}
)


@FAST
@given(
    st.sampled_from(VERSIONS),
    json_objects,
    st.text(min_size=1, max_size=8).filter(lambda k: k not in PROTECTED_TOP_LEVEL_KEYS),
)
def test_extra_top_level_keys_change_nothing_signed(rv: RoomVersion, junk: dict[str, Any], key: str) -> None:
    pdu = _event(rv, "m.room.message", {"body": "x"}, None)
    if key in pdu:
        return
    extended = dict(pdu, **{key: junk})
    assert key not in redact(extended, rv)
    assert compute_event_id(extended, rv) == compute_event_id(pdu, rv)


# Authorization rules --------------------------------------------------------------------------


def _room(rv: RoomVersion, levels: dict[str, int], pl_extra: dict[str, Any]) -> RoomSim:
    room = RoomSim(rv, ALICE)
    room.member(ALICE, "join")
    users = dict(levels)
    if not rv.privileged_creators:
        users[ALICE] = 100
    room.send("m.room.power_levels", ALICE, {"users": users, **pl_extra}, "")
    room.send("m.room.join_rules", ALICE, {"join_rule": "public"}, "")
    for user in levels:
        room.member(user, "join")
    return room


def _allowed(room: RoomSim, type_: str, sender: str, content: dict[str, Any], state_key: str | None) -> bool:
    try:
        room.send(type_, sender, content, state_key, commit=False)
    except AuthError:
        return False
    return True


levels = st.integers(0, 100)


@FAST
@given(
    st.sampled_from(VERSIONS),
    st.sampled_from(["m.room.message", "org.example.event", "m.room.topic", "m.room.name"]),
    json_objects,
    st.none() | st.sampled_from(["", "k", "x y"]),
)
def test_non_members_can_never_send(
    rv: RoomVersion, type_: str, content: dict[str, Any], state_key: str | None
) -> None:
    room = _room(rv, {BOB: 50}, {})
    assert not _allowed(room, type_, EVE, content, state_key)
    # ... nor after being banned, whatever their former power.
    room.send("m.room.member", ALICE, {"membership": "ban"}, BOB)
    assert not _allowed(room, type_, BOB, content, state_key)


@FAST
@given(st.sampled_from(VERSIONS), levels, levels, levels, json_objects)
def test_power_levels_gate_events(
    rv: RoomVersion, bob: int, state_default: int, events_default: int, content: dict[str, Any]
) -> None:
    room = _room(rv, {BOB: bob}, {"state_default": state_default, "events_default": events_default})
    assert _allowed(room, "org.example.state", BOB, content, "k") == (bob >= state_default)
    assert _allowed(room, "org.example.message", BOB, content, None) == (bob >= events_default)


@FAST
@given(st.sampled_from(VERSIONS), st.integers(0, 99), st.integers(0, 100), levels)
def test_nobody_grants_more_power_than_they_have(rv: RoomVersion, bob: int, target: int, carol: int) -> None:
    room = _room(rv, {BOB: bob, CAROL: carol}, {"state_default": 0})
    users = {BOB: bob, CAROL: target}
    if not rv.privileged_creators:
        users[ALICE] = 100
    allowed = _allowed(room, "m.room.power_levels", BOB, {"users": users, "state_default": 0}, "")
    if target == carol:
        assert allowed  # nothing changed
    else:
        # Raising anyone above yourself, or changing someone at or above your level, is refused.
        assert allowed == (target <= bob and carol < bob)


@FAST
@given(st.sampled_from(VERSIONS), levels, levels, st.sampled_from(["kick", "ban"]))
def test_kick_and_ban_need_their_level(rv: RoomVersion, bob: int, needed: int, action: str) -> None:
    room = _room(rv, {BOB: bob, CAROL: 0}, {action: needed})
    membership = "leave" if action == "kick" else "ban"
    allowed = _allowed(room, "m.room.member", BOB, {"membership": membership}, CAROL)
    assert allowed == (bob >= needed and bob > 0)


# State resolution -------------------------------------------------------------------------------


class Source:
    def __init__(self, room: RoomSim, seed: int) -> None:
        self.room = room
        self.rng = random.Random(seed)

    async def get_events(self, event_ids: Collection[str]) -> dict[str, Event]:
        ids = [i for i in event_ids if i in self.room.events]
        self.rng.shuffle(ids)
        return {i: self.room.events[i] for i in ids}


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["topic", "name", "power", "ban", "leave", "rules"]),
        st.sampled_from([ALICE, BOB, CAROL]),
        st.sampled_from([ALICE, BOB, CAROL]),
        st.integers(0, 100),
    ),
    max_size=4,
)


def _branch(room: RoomSim, fork: str, actions: list[tuple[str, str, str, int]], tag: str) -> str:
    """Apply the actions that pass the auth rules on a branch from `fork`; returns its tip."""
    tip = fork
    for i, (kind, who, target, n) in enumerate(actions):
        state = room.state_after[tip]
        attempts: dict[str, tuple[str, dict[str, Any], str | None]] = {
            "topic": ("m.room.topic", {"topic": f"{tag}{i}"}, ""),
            "name": ("m.room.name", {"name": f"{tag}{i}"}, ""),
            "ban": ("m.room.member", {"membership": "ban"}, target),
            "leave": ("m.room.member", {"membership": "leave"}, who),
            "rules": ("m.room.join_rules", {"join_rule": "invite" if n % 2 else "public"}, ""),
        }
        if kind == "power":
            current = dict(state[("m.room.power_levels", "")].content)
            users = dict(current.get("users", {}))
            users[target] = n
            if room.room_version.privileged_creators:
                users.pop(ALICE, None)
            attempts["power"] = ("m.room.power_levels", {**current, "users": users}, "")
        type_, content, state_key = attempts[kind]
        try:
            event = room.send(type_, who, content, state_key, prev=[tip])
        except AuthError:
            continue
        tip = event.event_id
    return tip


@SLOW
@given(st.sampled_from(VERSIONS), ACTIONS, ACTIONS, ACTIONS, st.integers(0, 1000))
def test_state_resolution_invariants(
    rv: RoomVersion,
    a: list[tuple[str, str, str, int]],
    b: list[tuple[str, str, str, int]],
    c: list[tuple[str, str, str, int]],
    seed: int,
) -> None:
    room = _room(rv, {BOB: 50, CAROL: 0}, {"state_default": 50})
    fork = room.latest[0]
    tips = [_branch(room, fork, acts, tag) for acts, tag in ((a, "a"), (b, "b"), (c, "c"))]
    sets: list[StateMap] = [room.state_ids(room.state_after[t]) for t in tips]

    def resolve(state_sets: list[StateMap], seed_: int) -> StateMap:
        return asyncio.run(resolve_state(rv, state_sets, Source(room, seed_)))

    result = resolve(sets, seed)
    # Independent of input order and of the order events are fetched in.
    assert resolve(list(reversed(sets)), seed + 1) == result
    assert resolve([sets[1], sets[2], sets[0]], seed + 2) == result
    # Unconflicted state wins.
    for key in set(sets[0]).intersection(*sets[1:]):
        if len({s[key] for s in sets}) == 1:
            assert result[key] == sets[0][key]
    # Only known events of this room, and the room keeps its create event.
    assert set(result.values()) <= set(room.events)
    assert result[("m.room.create", "")] == room.create.event_id
    # Resolving a state against itself changes nothing.
    for s in sets:
        assert resolve([s], seed) == dict(sorted(s.items()))
        assert resolve([s, dict(s)], seed) == dict(sorted(s.items()))
