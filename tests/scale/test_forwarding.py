"""Messages forwarded to the worker that owns their room (homeserver.forwarding).

Most tests run two workers of one homeserver in this process, on one PostgreSQL database,
each with its forwarding started on a private socket directory, so a test can look at
both ends. The last one runs `sotto serve --workers 2` under a one-room load.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psutil
import pytest
from sqlalchemy import func, select

from homeserver import forwarding
from homeserver.forwarding import RoomForwarding, room_owner, socket_path
from homeserver.storage.schema import event_txns, events
from homeserver.workers import forwarding_for
from tests.integration.test_tracing import SEND
from tests.scale.checks import assert_exactly_once, assert_linear_chain, room_rows
from tests.scale.matrix import SendLog, continuous_sender, register
from tests.scale.services import SottoProcesses
from tests.support.http import RawClient
from tests.support.otlp_collector import otlp_collector
from tests.support.server import RunningServer, run_server

pytestmark = pytest.mark.timeout(120)


@dataclass
class Worker:
    server: RunningServer
    forwarding: RoomForwarding
    client: RawClient


@dataclass
class Pair:
    workers: list[Worker]
    room: str
    users: list[str]  # user IDs; worker.client speaks for users[0] on both workers

    def owner(self) -> Worker:
        return self.workers[room_owner(self.room, 2)]

    def other(self) -> Worker:
        return self.workers[1 - room_owner(self.room, 2)]


def _sockets(tmp_path: Path) -> str:
    directory = tmp_path / "sockets"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)
    return str(directory)


@asynccontextmanager
async def worker_pair(
    pg_url: str, tmp_path: Path, links: list[dict[str, Any]], **extra: Any
) -> AsyncIterator[Pair]:
    """Two workers of one homeserver in this process; `links[i]`: worker i's `workers`
    config besides count and index (its socket directory, or TCP peers and a secret);
    `extra`: more config for both."""
    common: dict[str, Any] = {
        "server_name": "workers.test",
        "signing_key_path": str(tmp_path / "signing.key"),
        "database": {"url": pg_url},
        **extra,
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        run_server(str(tmp_path / "a"), **common, workers={"count": 2, "index": 0, **links[0]}) as a,
        run_server(str(tmp_path / "b"), **common, workers={"count": 2, "index": 1, **links[1]}) as b,
        aiohttp.ClientSession() as session,
    ):
        started: list[RoomForwarding] = []
        try:
            workers = []
            for server in (a, b):
                made = forwarding_for(server.hs)
                assert made is not None
                await made.start()
                started.append(made)
                workers.append(Worker(server, made, RawClient(session, server.base_url)))
            logins = [await a.login(name) for name in ("alice", "bob", "carol")]
            for worker in workers:
                worker.client.token = str(logins[0]["access_token"])
            others = [RawClient(session, a.base_url, str(x["access_token"])) for x in logins[1:]]
            room = await workers[0].client.room_with(*others)
            yield Pair(workers, room, [str(x["user_id"]) for x in logins])
        finally:
            for made in started:
                await made.stop()


@pytest.fixture
async def pair(pg_url: str, tmp_path: Path) -> AsyncIterator[Pair]:
    sockets = {"sockets": _sockets(tmp_path)}
    async with worker_pair(pg_url, tmp_path, [sockets, sockets]) as made:
        yield made


def _make_busy_and_shared(worker: Worker, room: str, users: list[str]) -> None:
    """What the worker would have seen in a busy room both workers write to: several of its
    own senders just now, and the other worker's writes found under the room's lock.

    Seen a minute ahead: a sender counts for GATHER_MEMORY_S (50 ms) only, and on a loaded
    host the test's next request can take longer than that to reach the decision."""
    ahead = 60.0
    now = asyncio.get_running_loop().time()
    worker.server.hs.creator._senders[room] = dict.fromkeys(users, now + ahead)
    worker.forwarding._foreign_writes[room] = (time.monotonic() + ahead, forwarding.SHARED_AFTER_WRITES)


async def _txn_rows(worker: Worker, txn_id: str) -> list[str]:
    async with worker.server.hs.db.read() as conn:
        rows = await conn.execute(select(event_txns.c.event_id).where(event_txns.c.txn_id == txn_id))
        return [str(r[0]) for r in rows]


async def _event_count(worker: Worker, room: str) -> int:
    async with worker.server.hs.db.read() as conn:
        count = await conn.execute(select(func.count()).select_from(events).where(events.c.room_id == room))
        return int(count.scalar_one())


async def test_a_busy_shared_room_is_forwarded_to_its_owner(pair: Pair) -> None:
    owner, other = pair.owner(), pair.other()
    last = await owner.client.send(pair.room, "from the owner", "o1")
    _make_busy_and_shared(other, pair.room, pair.users)

    event_id = await other.client.send(pair.room, "forwarded", "f1")
    assert other.forwarding.forwarded == 1 and owner.forwarding.created_for_others == 1
    assert owner.forwarding.forwarded == 0 and other.forwarding.fallbacks == 0
    stored = await owner.server.hs.events.get_event(event_id)
    assert stored is not None
    assert stored.event.prev_event_ids == [last]  # built on the owner's head
    # The worker that answered knows the event is committed: its own reads include it.
    assert other.server.hs.db.current_stream_id >= stored.stream_id
    assert await _txn_rows(owner, "f1") == [event_id]

    # A retry of the same transaction returns the same event and stores nothing new.
    count = await _event_count(owner, pair.room)
    assert await other.client.send(pair.room, "forwarded", "f1") == event_id
    assert other.forwarding.forwarded == 2
    assert await _event_count(owner, pair.room) == count


async def test_a_forwarded_message_stays_in_its_senders_trace(pg_url: str, tmp_path: Path) -> None:
    sockets = {"sockets": _sockets(tmp_path)}
    async with otlp_collector() as collector:
        tracing = {"enabled": True, "endpoint": collector.url, "export_delay_ms": 50}
        async with worker_pair(pg_url, tmp_path, [sockets, sockets], tracing=tracing) as pair:
            other = pair.other()
            _make_busy_and_shared(other, pair.room, pair.users)
            await other.client.send(pair.room, "forwarded", "f1")
            assert other.forwarding.forwarded == 1

            sent = await collector.wait_for(lambda: collector.named(SEND))
            (forward,) = await collector.wait_for(lambda: collector.children(sent[0], "worker.forward"))
            (taken,) = await collector.wait_for(lambda: collector.children(forward, "worker.forwarded"))
            assert await collector.wait_for(lambda: collector.children(taken, "event.persist_batch"))
            index = room_owner(pair.room, 2)
            assert forward.attributes["sotto.worker.owner"] == index
            assert taken.resource["service.instance.id"] == f"workers.test/worker-{index}"
            assert sent[0].resource["service.instance.id"] == f"workers.test/worker-{1 - index}"


async def test_forwarding_starts_only_for_busy_shared_rooms(pair: Pair) -> None:
    owner, other = pair.owner(), pair.other()
    decide = other.forwarding.owner
    assert owner.forwarding.owner(pair.room) is None  # the owner never forwards

    # Each time the other worker takes the room's lock after the owner wrote, it counts.
    for i in range(forwarding.SHARED_AFTER_WRITES + 1):
        await owner.client.send(pair.room, "owner", f"o{i}")
        await other.client.send(pair.room, "other", f"x{i}")
    since, count = other.forwarding._foreign_writes[pair.room]
    assert count >= forwarding.SHARED_AFTER_WRITES
    assert owner.forwarding.forwarded == 0 and other.forwarding.forwarded == 0

    # Shared, but one sender of its own here: not worth the extra hop.
    assert decide(pair.room) is None
    now = asyncio.get_running_loop().time()
    senders = other.server.hs.creator._senders
    senders[pair.room] = dict.fromkeys(pair.users[: forwarding.SHARED_MIN_SENDERS - 1], now)
    assert decide(pair.room) is None
    senders[pair.room] = dict.fromkeys(pair.users, now)
    assert decide(pair.room) == room_owner(pair.room, 2)

    # Once forwarding, it goes on while messages come, although this worker no longer sees
    # the owner's writes or its own senders ...
    senders.pop(pair.room)
    other.forwarding._foreign_writes.pop(pair.room)
    assert decide(pair.room) == room_owner(pair.room, 2)
    # ... until the room is idle here for IDLE_AFTER_S.
    other.forwarding._forwarding[pair.room] = time.monotonic() - forwarding.IDLE_AFTER_S - 1
    assert decide(pair.room) is None
    # A single foreign write (another worker's join, say) is not sharing.
    other.forwarding._foreign_writes[pair.room] = (since, 1)
    senders[pair.room] = dict.fromkeys(pair.users, now)
    assert decide(pair.room) is None


async def test_refusals_come_back_from_the_owner(pair: Pair) -> None:
    owner, other = pair.owner(), pair.other()
    outsider = await other.server.login("mallory")
    client = RawClient(other.client.session, other.server.base_url, str(outsider["access_token"]))
    message = {"msgtype": "m.text", "body": "x"}
    _make_busy_and_shared(other, pair.room, pair.users)
    status, body = await client.request("PUT", f"/rooms/{quote(pair.room)}/send/m.room.message/m1", message)
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    assert body["error"] == "You are not joined to this room"
    assert pair.room in other.forwarding._forwarding  # the owner was asked
    assert owner.forwarding.created_for_others == 0 and other.forwarding.forwarded == 0

    # A room that does not exist gets the same answer: no probing for rooms through the owner.
    missing = "!nothere:workers.test"
    sender = pair.workers[1 - room_owner(missing, 2)]
    _make_busy_and_shared(sender, missing, pair.users)
    status, body = await sender.client.request(
        "PUT", f"/rooms/{quote(missing)}/send/m.room.message/m2", message
    )
    assert status == 403 and body["error"] == "You are not joined to this room", body
    assert missing in sender.forwarding._forwarding


async def test_an_unreachable_owner_leaves_the_message_to_this_worker(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "For a while" below is RETRY_AFTER_S; a slow host could spend 2 s on the two sends.
    monkeypatch.setattr(forwarding, "RETRY_AFTER_S", 120.0)
    owner, other = pair.owner(), pair.other()
    await owner.forwarding.stop()  # its listener is gone
    _make_busy_and_shared(other, pair.room, pair.users)
    event_id = await other.client.send(pair.room, "here", "u1")
    assert other.forwarding.fallbacks == 1 and other.forwarding.forwarded == 0
    assert await _txn_rows(other, "u1") == [event_id]
    # For a while the owner is not tried again: the next message goes straight to the room.
    assert other.forwarding.owner(pair.room) is None
    await other.client.send(pair.room, "here too", "u2")
    assert other.forwarding.fallbacks == 1


async def test_an_owner_lost_after_its_commit_stores_the_message_once(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, other = pair.owner(), pair.other()
    send = forwarding._Frames.send

    def commit_then_drop(self: forwarding._Frames, message: Any) -> None:
        if isinstance(message, dict) and "pdu" in message and self.transport is not None:
            self.transport.close()  # the owner committed, and is gone before it answers
            return
        send(self, message)

    monkeypatch.setattr(forwarding._Frames, "send", commit_then_drop)
    _make_busy_and_shared(other, pair.room, pair.users)
    count = await _event_count(owner, pair.room)
    event_id = await other.client.send(pair.room, "once", "d1")
    assert owner.forwarding.created_for_others == 1  # the owner stored it ...
    assert other.forwarding.fallbacks == 1  # ... the other worker never heard, and tried itself
    assert await _txn_rows(other, "d1") == [event_id]  # one event, the owner's
    assert await _event_count(owner, pair.room) == count + 1


async def test_frames_that_are_too_large_or_not_json_close_the_connection(pair: Pair) -> None:
    directory = pair.owner().forwarding.links.directory
    assert directory is not None
    path = socket_path(directory, pair.owner().forwarding.index)
    for frame in ((1 << 30).to_bytes(4, "big"), (5).to_bytes(4, "big") + b"{nope"):
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(frame)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the owner
        writer.close()
    # The owner still serves well-formed requests.
    _make_busy_and_shared(pair.other(), pair.room, pair.users)
    await pair.other().client.send(pair.room, "still fine", "ok1")
    assert pair.other().forwarding.forwarded == 1


async def test_no_forwarding_from_a_directory_others_can_reach(pg_url: str, tmp_path: Path) -> None:
    sockets = tmp_path / "open"
    sockets.mkdir()
    os.chmod(sockets, 0o755)
    workers = {"count": 2, "index": 0, "sockets": str(sockets)}
    async with run_server(str(tmp_path), database={"url": pg_url}, workers=workers) as server:
        assert forwarding_for(server.hs) is None
        os.chmod(sockets, 0o700)
        assert forwarding_for(server.hs) is not None


async def _forwarding_metrics(base: str, workers: int = 2) -> dict[str, dict[str, float]]:
    """Each worker's forwarding counters (its index -> name -> value), read from /metrics
    until `workers` workers answered (the port reaches any of them)."""
    seen: dict[str, dict[str, float]] = {}
    pattern = re.compile(r'^(sotto_[a-z_]+)_total\{worker="(\d+)"\} ([0-9.e+]+)$', re.M)
    for _ in range(200):
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            s.get(base + "/metrics") as resp,
        ):
            text = await resp.text()
        for name, worker, value in pattern.findall(text):
            seen.setdefault(worker, {})[name] = float(value)
        if len(seen) == workers:
            return seen
    raise AssertionError(f"/metrics never showed {workers} workers: {seen}")


def _worker_sockets(supervisor: int) -> str:
    argv = psutil.Process(supervisor).children()[0].cmdline()
    return str(argv[argv.index("--worker-sockets") + 1])


def _listing(directory: str) -> tuple[int, list[str]] | None:
    """The directory's permission bits and its sockets, or None when it does not exist."""
    if not os.path.isdir(directory):
        return None
    names = sorted(
        n for n in os.listdir(directory) if stat.S_ISSOCK(os.stat(os.path.join(directory, n)).st_mode)
    )
    return stat.S_IMODE(os.stat(directory).st_mode), names


async def test_sotto_serve_workers_forwards_a_busy_room(workdir: Path, pg_url: str, redis_url: str) -> None:
    procs = SottoProcesses(workdir, pg_url, redis_url)
    procs.start_supervisor(2)
    try:
        await procs.wait_ready(distinct_pids=2)
        base = procs.base_url()
        tokens = [(await register(base, f"busy{i}"))[1] for i in range(6)]
        async with aiohttp.ClientSession() as s:
            creator = RawClient(s, base, tokens[0])
            room = await creator.room_with(*(RawClient(s, base, t) for t in tokens[1:]))
        stop = asyncio.Event()
        logs = [SendLog() for _ in tokens]
        # Every request on a new connection: each sender's messages reach both workers.
        senders = [
            asyncio.create_task(continuous_sender([base], token, room, f"b{i}", stop, logs[i]))
            for i, token in enumerate(tokens)
        ]
        await asyncio.sleep(3.0)
        stop.set()
        await asyncio.gather(*senders)
        counts = await _forwarding_metrics(base)
        owner = str(room_owner(room, 2))
        other = str(1 - int(owner))
        assert counts[other]["sotto_forwarded_messages"] > 0, counts
        assert (
            counts[owner]["sotto_messages_created_for_workers"] == counts[other]["sotto_forwarded_messages"]
        )
        assert counts[owner]["sotto_forwarded_messages"] == 0
        rows = await room_rows(pg_url, room)
        assert assert_exactly_once(rows, logs) > 20
        assert_linear_chain(rows)
        sockets = _worker_sockets(procs.procs[0].pid)
        assert _listing(sockets) == (0o700, ["0.sock", "1.sock"])
    finally:
        procs.stop()
    assert _listing(sockets) is None  # removed by the supervisor as it stops


async def busy_room_through_both(
    procs: SottoProcesses, pg_url: str, prefix: str
) -> tuple[dict[str, Any], str]:
    """Three senders through each of two started processes in one room for 3 s (as a load
    balancer would spread them); checks every acknowledged message is stored once in one
    chain, and returns each worker's forwarding counters and the room."""
    await procs.wait_ready()
    bases = [procs.base_url(0), procs.base_url(1)]
    tokens = [(await register(bases[0], f"{prefix}{i}"))[1] for i in range(6)]
    async with aiohttp.ClientSession() as s:
        creator = RawClient(s, bases[0], tokens[0])
        room = await creator.room_with(*(RawClient(s, bases[0], t) for t in tokens[1:]))
    stop = asyncio.Event()
    logs = [SendLog() for _ in tokens]
    senders = [
        asyncio.create_task(
            continuous_sender(bases[i % 2 :] + bases[: i % 2], token, room, f"{prefix}{i}", stop, logs[i])
        )
        for i, token in enumerate(tokens)
    ]
    await asyncio.sleep(3.0)
    stop.set()
    await asyncio.gather(*senders)
    counts = {k: v for base in bases for k, v in (await _forwarding_metrics(base, 1)).items()}
    rows = await room_rows(pg_url, room)
    assert assert_exactly_once(rows, logs) > 20
    assert_linear_chain(rows)
    return counts, room


async def test_separately_started_workers_forward_a_busy_room(
    workdir: Path, pg_url: str, redis_url: str
) -> None:
    """Two `sotto serve` processes on their own ports (as behind a load balancer), each
    configured as worker i of 2 with one socket directory, forward as the supervisor's do."""
    sockets = tempfile.mkdtemp(prefix="sotto-workers-")  # mode 0700
    procs = SottoProcesses(workdir, pg_url, redis_url)
    procs.start_independent(2, sockets)
    try:
        counts, room = await busy_room_through_both(procs, pg_url, "lb")
        owner = str(room_owner(room, 2))
        other = str(1 - int(owner))
        assert counts[other]["sotto_forwarded_messages"] > 0, counts
        assert (
            counts[owner]["sotto_messages_created_for_workers"] == counts[other]["sotto_forwarded_messages"]
        )
        assert _listing(sockets) == (0o700, ["0.sock", "1.sock"])
    finally:
        procs.stop()
        shutil.rmtree(sockets, ignore_errors=True)
