"""Federation under stress: a server that was down catches up, concurrent state converges,
forged and tampered events are refused."""

from __future__ import annotations

from typing import Any

import aiohttp

from homeserver.events import pdu_json
from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    forge_message,
    has_membership,
    joined_pair,
    room_bodies,
    send_pdus,
    wait_for,
)
from tests.support.server import RunningServer, free_port, lasting_database


async def test_down_server_catches_up(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    """B goes down; A queues 60 messages and restarts itself; when B is back it receives
    all of them, in order, once."""
    a_port, b_port = free_port(), free_port()
    async with aiohttp.ClientSession() as http, lasting_database() as db_a, lasting_database() as db_b:
        async with fed_server(tmp_dirs[0], test_ca, fed_port=a_port, **db_a) as a:
            alice = await Client.login(a, "alice", http)
            room_id = await alice.create_room(preset="public_chat")
            async with fed_server(tmp_dirs[1], test_ca, fed_port=b_port, **db_b) as b:
                bob = await Client.login(b, "bob", http)
                await bob.join(room_id, via=[a.server_name])
                await wait_for(lambda: has_membership(a, room_id, bob.user_id), what="bob joined on A")
            # B is down: A queues everything for it.
            sent = [f"while down {i}" for i in range(60)]
            for body in sent:
                await alice.send(room_id, body)
            assert await federation_of(a).store.pending_count(f"127.0.0.1:{b_port}") >= 60
        # A restarts too (its queue is on disk), then B comes back.
        async with (
            fed_server(tmp_dirs[0], test_ca, fed_port=a_port, **db_a) as a,
            fed_server(tmp_dirs[1], test_ca, fed_port=b_port, **db_b) as b,
        ):
            bob = await Client.login(b, "bob", http)

            async def all_there() -> bool:
                bodies = await room_bodies(bob, room_id)
                return all(s in bodies for s in sent)

            await wait_for(all_there, timeout=30, what="B catching up")
            assert await federation_of(a).queue.idle(10)
            bodies = [x for x in await room_bodies(bob, room_id) if x.startswith("while down")]
            assert bodies == sent  # in order, nothing missing, nothing twice


async def test_concurrent_state_changes_converge(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with joined_pair(test_ca, tmp_dirs, room_version="11") as (a, b, alice, bob, room_id):
        power = await alice.call("GET", f"/rooms/{room_id}/state/m.room.power_levels/")
        power["users"][bob.user_id] = 100
        pl_id = await alice.state(room_id, "m.room.power_levels", power)
        await wait_for(lambda: _has_event(b, pl_id), what="power levels on B")

        fa, fb = federation_of(a), federation_of(b)
        await fa.queue.stop()
        await fb.queue.stop()
        # Both sides change the same state while they cannot talk to each other.
        await alice.state(room_id, "m.room.name", {"name": "Alice's name"})
        await alice.state(room_id, "m.room.topic", {"topic": "from A"})
        await bob.state(room_id, "m.room.name", {"name": "Bob's name"})
        await bob.state(room_id, "m.room.topic", {"topic": "from B"})
        await bob.send(room_id, "bob on the fork")
        await fa.queue.start()
        await fb.queue.start()

        async def converged() -> bool:
            sa = await a.hs.events.get_current_state_ids(room_id)
            sb = await b.hs.events.get_current_state_ids(room_id)
            return sa == sb and ("m.room.name", "") in sa

        await wait_for(converged, what="state converging")
        await fa.queue.idle()
        await fb.queue.idle()
        # Both servers can keep talking in the merged room.
        await alice.send(room_id, "after the merge")
        await wait_for(lambda: _has_body(bob, room_id, "after the merge"), what="message after merge")
        assert await a.hs.events.get_current_state_ids(room_id) == await b.hs.events.get_current_state_ids(
            room_id
        )


async def _has_event(srv: RunningServer, event_id: str) -> bool:
    return await srv.hs.events.get_event(event_id) is not None


async def _has_body(client: Client, room_id: str, body: str) -> bool:
    return body in await room_bodies(client, room_id)


async def test_forged_and_tampered_events_are_refused(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):

        async def send(pdus: list[dict[str, Any]], txn: str) -> dict[str, Any]:
            return await send_pdus(b, a, pdus, txn)

        # 1. A bad signature.
        ev = await forge_message(a, room_id, bob.user_id, {"msgtype": "m.text", "body": "sig"}, b)
        pdu = pdu_json(ev)
        sigs = pdu["signatures"][b.server_name]
        key_id = next(iter(sigs))
        pdu["signatures"] = {b.server_name: {key_id: "A" * 86}}
        result = await send([pdu], "bad-sig")
        assert result[ev.event_id].get("error")
        assert await a.hs.events.get_event(ev.event_id) is None

        # 2. Wrong origin: claims to be from alice (server A) but only B signed it.
        ev = await forge_message(a, room_id, alice.user_id, {"msgtype": "m.text", "body": "spoof"}, b)
        result = await send([pdu_json(ev)], "wrong-origin")
        assert result[ev.event_id].get("error")
        assert await a.hs.events.get_event(ev.event_id) is None

        # 3. Fails the auth rules: a B user who never joined.
        ev = await forge_message(
            a, room_id, f"@mallory:{b.server_name}", {"msgtype": "m.text", "body": "x"}, b
        )
        result = await send([pdu_json(ev)], "not-joined")
        assert "not allowed" in result[ev.event_id].get("error", "")
        assert ev.event_id not in [e["event_id"] for e in await alice.messages(room_id)]

        # 4. Tampered content (hash mismatch): stored redacted, content stripped.
        ev = await forge_message(a, room_id, bob.user_id, {"msgtype": "m.text", "body": "original"}, b)
        pdu = pdu_json(ev)
        pdu["content"] = {"msgtype": "m.text", "body": "tampered"}
        result = await send([pdu], "tampered")
        assert result[ev.event_id] == {}
        stored = await a.hs.events.get_event(ev.event_id)
        assert stored is not None and stored.event.content == {}

        # 5. A transaction replayed with the same ID is answered the same, and not reprocessed.
        again = await send([pdu], "tampered")
        assert again == result


async def test_lost_events_are_fetched_as_missing_events(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):
        fa = federation_of(a)
        await fa.queue.stop()
        lost = [f"lost {i}" for i in range(5)]
        for body in lost:
            await alice.send(room_id, body)
        # Simulate transactions that never arrived: drop everything queued for B.
        batch = await fa.store.next_batch(b.server_name, 50, 100)
        await fa.store.remove(batch.row_ids, b.server_name)
        await fa.queue.start()
        await alice.send(room_id, "arrives")

        async def all_there() -> bool:
            bodies = await room_bodies(bob, room_id)
            return all(x in bodies for x in [*lost, "arrives"])

        await wait_for(all_there, what="missing events fetched by B")


async def test_soft_failed_event_is_hidden(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with joined_pair(test_ca, tmp_dirs, room_version="11") as (a, b, alice, bob, room_id):
        fa, fb = federation_of(a), federation_of(b)
        await fa.queue.stop()
        await fb.queue.stop()
        await alice.call("POST", f"/rooms/{room_id}/ban", {"user_id": bob.user_id, "reason": "spam"})
        # B has not heard of the ban: for it, Bob may still speak.
        sneaky = await bob.send(room_id, "sneaky")
        await fa.queue.start()
        await fb.queue.start()

        async def ban_on_b() -> bool:
            found = await b.hs.events.get_membership(room_id, bob.user_id)
            return found is not None and found[0] == "ban"

        await wait_for(ban_on_b, what="ban reaching B")
        await fb.queue.idle()
        # A accepted the event into the DAG but soft-failed it: clients never see it.
        info = (await fa.tracker.get_infos([sneaky])).get(sneaky)
        assert info is not None and info.soft_failed
        assert "sneaky" not in await room_bodies(alice, room_id)
        assert await a.hs.events.get_current_state_ids(room_id) == await b.hs.events.get_current_state_ids(
            room_id
        )


async def test_event_committed_but_not_queued_is_sent_after_restart(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    """A crash between committing a local event and queueing it for federation loses nothing:
    on start, the federation service queues local events that never reached it."""
    async with joined_pair(test_ca, tmp_dirs) as (a, _, alice, bob, room_id):
        # Commit an event exactly as EventCreator does, but "crash" before its listeners run.
        creator = a.hs.creator
        rv = await a.hs.events.get_room_version(room_id)
        assert rv is not None
        event, auth_map, create = await creator._build(
            rv,
            room_id,
            "m.room.message",
            alice.user_id,
            {"msgtype": "m.text", "body": "stranded"},
            None,
            None,
        )
        creator._check(event, auth_map, create)
        await a.hs.events.persist_event(event)
        assert "stranded" not in await room_bodies(bob, room_id)
        assert await federation_of(a).recover_unsent_local_events() == 1
        await wait_for(lambda: _has_body(bob, room_id, "stranded"), what="the stranded event to reach B")
        # Recovery is idempotent: the event now went through federation.
        assert await federation_of(a).recover_unsent_local_events() == 0
