"""A transaction's chain of messages in one room is checked and stored in one database
transaction (bridge.message_runs); anything in doubt takes the full per-PDU checks, with the
same answers as before."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import update

from bridge.service import Federation
from homeserver.events import Event, pdu_json
from homeserver.storage.schema import current_state
from tests.federation.support import (
    CertAuthority,
    Client,
    federation_of,
    forge_chain,
    joined_pair,
    room_bodies,
    send_pdus,
)
from tests.support.server import RunningServer


def _counts(fed: Federation) -> tuple[int, int, int]:
    inbound = fed.inbound
    return inbound.runs, inbound.run_events, inbound.runs_declined


async def _refused(
    a: RunningServer, b: RunningServer, alice: Client, room_id: str, chain: list[Event], why: str
) -> None:
    """`chain`, sent to A in one transaction, takes the full checks, which reject each event
    for `why`."""
    before = _counts(federation_of(a))
    answers = await send_pdus(b, a, [pdu_json(e) for e in chain], f"refused-{chain[0].event_id}")
    assert all(why in answers[e.event_id].get("error", "") for e in chain)
    after = _counts(federation_of(a))
    assert after[0] == before[0] and after[2] == before[2] + 1
    assert "run 0" not in await room_bodies(alice, room_id)


async def _unread(alice: Client, room_id: str) -> Any:
    sync = await alice.call("GET", "/sync", timeout="0")
    return sync["rooms"]["join"][room_id]["unread_notifications"]["notification_count"]


async def test_a_chain_of_messages_is_stored_in_one_transaction(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):
        fa = federation_of(a)
        before = _counts(fa)
        chain = await forge_chain(a, b, room_id, [bob.user_id] * 5)
        answers = await send_pdus(b, a, [pdu_json(e) for e in chain], "run-1")
        assert answers == {e.event_id: {} for e in chain}
        runs, events, declined = _counts(fa)
        assert (runs - before[0], events - before[1], declined - before[2]) == (1, 5, 0)
        # In order, after everything A had, and the last is A's only forward extremity.
        stored = [await a.hs.events.get_event(e.event_id) for e in chain]
        positions = [s.stream_id for s in stored if s is not None]
        assert len(positions) == 5 and positions == sorted(positions)
        assert (await room_bodies(alice, room_id))[-5:] == [f"run {i}" for i in range(5)]
        prevs, depth = await a.hs.events.get_extremities_and_depth(room_id)
        assert prevs == [chain[-1].event_id] and depth == chain[-1].depth
        # Every event is placed in the DAG with the state before it, accepted.
        infos = await fa.tracker.get_infos([e.event_id for e in chain])
        before_first = await fa.tracker.get_infos(chain[0].prev_event_ids)
        groups = {i.state_group for i in infos.values()}
        assert len(infos) == 5 and groups == {before_first[chain[0].prev_event_ids[0]].state_group}
        assert not any(i.rejected_reason or i.soft_failed for i in infos.values())
        # Their push actions were written with them: alice is notified of all five.
        assert await _unread(alice, room_id) == 5
        # A retry of the transaction is answered the same and stores nothing again.
        assert await send_pdus(b, a, [pdu_json(e) for e in chain], "run-1") == answers
        bodies = await room_bodies(alice, room_id)
        assert [bodies.count(f"run {i}") for i in range(5)] == [1] * 5


async def test_a_run_wakes_parked_syncs_that_it_does_not_notify(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):
        await alice.sync()
        # Notices notify nobody (.m.rule.suppress_notices): no push action wakes alice.
        chain = await forge_chain(a, b, room_id, [bob.user_id] * 3, msgtype="m.notice")
        parked = asyncio.create_task(alice.sync(timeout_ms=10_000))
        await asyncio.sleep(0.2)
        assert not parked.done()
        started = time.monotonic()
        await send_pdus(b, a, [pdu_json(e) for e in chain], "notices")
        woken = await parked
        assert time.monotonic() - started < 5
        timeline = woken["rooms"]["join"][room_id]["timeline"]["events"]
        assert [e["event_id"] for e in timeline] == [e.event_id for e in chain]


async def test_a_run_holding_a_refused_event_takes_the_full_checks(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):
        fa = federation_of(a)
        before = _counts(fa)
        mallory = f"@mallory:{b.server_name}"  # never joined
        chain = await forge_chain(a, b, room_id, [bob.user_id, mallory, bob.user_id])
        answers = await send_pdus(b, a, [pdu_json(e) for e in chain], "refused")
        assert answers[chain[0].event_id] == {}
        assert "not allowed" in answers[chain[1].event_id].get("error", "")
        assert _counts(fa)[0] == before[0] and _counts(fa)[2] == before[2] + 1
        bodies = await room_bodies(alice, room_id)
        assert "run 0" in bodies and "run 1" not in bodies


async def test_a_run_allowed_by_its_own_auth_events_only_is_rejected(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):
        fa = federation_of(a)
        # Auth events that let bob speak (his join), then a ban B has not heard of.
        auth = list((await forge_chain(a, b, room_id, [bob.user_id]))[0].auth_event_ids)
        await fa.queue.stop()
        await alice.call("POST", f"/rooms/{room_id}/ban", {"user_id": bob.user_id})
        chain = await forge_chain(a, b, room_id, [bob.user_id] * 2, auth=auth)
        await _refused(a, b, alice, room_id, chain, "not allowed by the state before it")


async def test_a_run_refused_by_its_own_auth_events_only_is_rejected(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):
        member = (await a.hs.events.get_current_state_ids(room_id))[("m.room.member", bob.user_id)]
        auth = [e for e in (await forge_chain(a, b, room_id, [bob.user_id]))[0].auth_event_ids if e != member]
        chain = await forge_chain(a, b, room_id, [bob.user_id] * 2, auth=auth)
        await _refused(a, b, alice, room_id, chain, "not allowed by its auth events")


async def test_a_run_that_repeats_a_stored_event_stores_each_once(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):
        fa = federation_of(a)
        chain = await forge_chain(a, b, room_id, [bob.user_id] * 3)
        assert await send_pdus(b, a, [pdu_json(chain[0])], "first-alone") == {chain[0].event_id: {}}
        before = _counts(fa)
        answers = await send_pdus(b, a, [pdu_json(e) for e in chain], "all-three")
        assert answers == {e.event_id: {} for e in chain}
        assert _counts(fa)[2] == before[2] + 1  # the known first event: full checks
        assert (await room_bodies(alice, room_id))[-3:] == ["run 0", "run 1", "run 2"]
        assert (await room_bodies(alice, room_id)).count("run 0") == 1


async def test_a_run_on_a_fork_is_resolved_by_the_full_checks(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):
        fa = federation_of(a)
        # B's chain cites A's head as it was; alice then sends on A, forking the room.
        chain = await forge_chain(a, b, room_id, [bob.user_id] * 3)
        await federation_of(a).queue.stop()  # keep alice's message to A alone
        own = await alice.send(room_id, "alice meanwhile")
        before = _counts(fa)
        answers = await send_pdus(b, a, [pdu_json(e) for e in chain], "fork")
        assert answers == {e.event_id: {} for e in chain}
        assert _counts(fa)[0] == before[0] and _counts(fa)[2] == before[2] + 1
        prevs, _ = await a.hs.events.get_extremities_and_depth(room_id)
        assert sorted(prevs) == sorted([own, chain[-1].event_id])


async def test_a_badly_signed_event_ends_the_run(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, b, _alice, bob, room_id):
        fa = federation_of(a)
        before = _counts(fa)
        chain = await forge_chain(a, b, room_id, [bob.user_id] * 3)
        pdus = [pdu_json(e) for e in chain]
        key_id = next(iter(pdus[2]["signatures"][b.server_name]))
        pdus[2]["signatures"] = {b.server_name: {key_id: "A" * 86}}
        answers = await send_pdus(b, a, pdus, "bad-sig")
        assert answers[chain[0].event_id] == {} and answers[chain[1].event_id] == {}
        assert "signature" in answers[chain[2].event_id].get("error", "")
        runs, events, _ = _counts(fa)
        assert (runs - before[0], events - before[1]) == (1, 2)
        assert await a.hs.events.get_event(chain[2].event_id) is None


async def test_a_run_whose_write_fails_is_taken_event_by_event(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):
        failures: list[int] = []

        async def failing(*_args: object, **_kwargs: object) -> list[int]:
            failures.append(1)
            raise RuntimeError("injected: the run's write fails")

        chain = await forge_chain(a, b, room_id, [bob.user_id] * 3)
        with monkeypatch.context() as patch:
            patch.setattr(a.hs.events, "persist_message_batch", failing)
            answers = await send_pdus(b, a, [pdu_json(e) for e in chain], "write-fails")
        assert failures == [1]
        assert answers == {e.event_id: {} for e in chain}
        assert (await room_bodies(alice, room_id))[-3:] == ["run 0", "run 1", "run 2"]


async def test_a_run_whose_state_is_not_the_rooms_current_state_takes_the_full_checks(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    # A safety net: the run's prev is the room's only extremity, yet the state before the
    # run differs from the room's current state (here forced by pointing the current topic
    # back at an older topic event). Storing the run with its own state would then leave
    # the current state wrong under the run: it takes the full checks instead.
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):
        fa = federation_of(a)
        older = await alice.state(room_id, "m.room.topic", {"topic": "one"})
        await alice.state(room_id, "m.room.topic", {"topic": "two"})
        async with a.hs.db.write() as conn:
            await conn.execute(
                update(current_state)
                .where(current_state.c.room_id == room_id, current_state.c.type == "m.room.topic")
                .values(event_id=older)
            )
        a.hs.events.invalidate_room(room_id)
        chain = await forge_chain(a, b, room_id, [bob.user_id] * 3)
        before = _counts(fa)
        answers = await send_pdus(b, a, [pdu_json(e) for e in chain], "drifted")
        assert answers == {e.event_id: {} for e in chain}
        assert _counts(fa)[0] == before[0] and _counts(fa)[2] == before[2] + 1
        assert (await room_bodies(alice, room_id))[-3:] == ["run 0", "run 1", "run 2"]
