"""Several workers of one homeserver on PostgreSQL: only the elected leader drains the outbound
queue; the others enqueue, and the leader sends what they queued. Failover hands the queue on.

Two in-process workers share a fresh PostgreSQL database, the server name and signing key
(worker 2 listens for federation on a port nobody dials). Skips without PostgreSQL or Redis.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from bridge.service import Federation
from homeserver.events import pdu_json
from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    forge_chain,
    room_bodies,
    send_pdus,
    wait_for,
)
from tests.federation.workers_support import two_workers
from tests.support.diagnostics import task_dump_after
from tests.support.postgres import available
from tests.support.server import RunningServer

pytestmark = pytest.mark.timeout(120)


def _redis_up(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@asynccontextmanager
async def _two_workers(
    directory: str, ca: CertAuthority
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    if not await available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    if not _redis_up():
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    async with two_workers(directory, ca) as pair:
        yield pair


def _leaders(*workers: RunningServer) -> list[Federation]:
    return [f for f in map(federation_of, workers) if f.leader is not None and f.leader.is_leader]


async def test_only_the_leader_sends_and_failover(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with (
        task_dump_after(90, "leader/failover test"),
        _two_workers(tmp_dirs[0], test_ca) as (w1, w2),
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        assert w1.server_name == w2.server_name
        # Elected first, then leading once it has queued what was left unsent.
        await wait_for(
            lambda: _async(len(_leaders(w1, w2)) == 1 and _leaders(w1, w2)[0].queue.leading),
            what="one federation sender elected and leading",
        )
        leader = _leaders(w1, w2)[0]
        leader_w, follower_w = (w1, w2) if leader is federation_of(w1) else (w2, w1)
        follower = federation_of(follower_w)
        assert leader.queue.leading and not follower.queue.leading

        # The room lives on the follower's side of A; bob (on B) joins through A's name.
        alice = await Client.login(follower_w, "alice", http)
        bob = await Client.login(b, "bob", http)
        room_id = await alice.create_room(preset="public_chat")
        await bob.join(room_id, via=[follower_w.server_name])

        # Messages sent on the follower are queued there and delivered by the leader.
        before = leader.queue.sent_transactions
        for i in range(3):
            await alice.send(room_id, f"from follower {i}")
        await wait_for(
            lambda: _contains(bob, room_id, [f"from follower {i}" for i in range(3)]),
            what="follower's messages on B",
        )
        # B shows the messages once stored, a moment before its answer reaches the leader.
        await wait_for(lambda: _async(leader.queue.sent_transactions > before), what="the leader's count")
        assert follower.queue.sent_transactions == 0

        # Failover: the leader leaves the election; the other worker takes the queue over.
        assert leader.leader is not None
        await leader.leader.stop()
        assert not leader.queue.leading
        await wait_for(lambda: _async(follower.queue.leading), timeout=15, what="failover")
        alice_on_old = Client(leader_w.base_url, alice.user_id, alice.token, http)
        await alice_on_old.send(room_id, "after failover")
        await wait_for(lambda: _contains(bob, room_id, ["after failover"]), what="message after failover")
        await wait_for(lambda: _async(follower.queue.sent_transactions > 0), what="the new leader's count")


async def test_single_process_leads_at_once(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with fed_server(tmp_dirs[0], test_ca) as a:
        fed = federation_of(a)
        if a.hs.db.shared:
            pytest.skip("this suite runs on PostgreSQL")
        assert fed.leader is not None and fed.leader.is_leader and fed.queue.leading


async def _async(value: bool) -> bool:
    return value


async def _contains(client: Client, room_id: str, wanted: list[str]) -> bool:
    bodies = await room_bodies(client, room_id)
    return all(w in bodies for w in wanted)


async def test_a_run_of_messages_received_by_one_worker(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    """A chain of messages in one transaction (bridge.message_runs) stored by the worker that
    received it, in a room the other worker writes too: each builds on the other's events."""
    async with (
        _two_workers(tmp_dirs[0], test_ca) as (w1, w2),
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(w2, "alice", http)
        bob = await Client.login(b, "bob", http)
        room_id = await alice.create_room(preset="public_chat")
        await bob.join(room_id, via=[w1.server_name])
        before = await alice.send(room_id, "from w2")
        fed1 = federation_of(w1)

        async def placed() -> bool:
            info = (await fed1.tracker.get_infos([before])).get(before)
            return info is not None and info.state_group is not None

        await wait_for(placed, what="w2's message placed in the DAG")
        chain = await forge_chain(w1, b, room_id, [bob.user_id] * 3)
        assert chain[0].prev_event_ids == [before]
        runs = fed1.inbound.runs
        answers = await send_pdus(b, w1, [pdu_json(e) for e in chain], "workers-run")
        assert answers == {e.event_id: {} for e in chain}
        assert fed1.inbound.runs == runs + 1
        # Each worker's next message builds on the run's last event.
        for worker in (w2, w1):
            sent = await Client(worker.base_url, alice.user_id, alice.token, http).send(room_id, "next")
            stored = await worker.hs.events.get_event(sent)
            assert stored is not None and stored.event.prev_event_ids == [chain[-1].event_id]
            chain.append(stored.event)
        # Read on w1, which has seen every position (these in-process workers run no Redis
        # bridge, so w2 would learn w1's only from its own next write).
        alice_on_w1 = Client(w1.base_url, alice.user_id, alice.token, http)
        wanted = ["from w2", "run 0", "run 1", "run 2", "next", "next"]
        assert (await room_bodies(alice_on_w1, room_id))[-6:] == wanted
