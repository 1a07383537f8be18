"""Fault tests: `sotto serve --workers 2` under continuous load while things break.

The database and Redis are private instances (tests.scale.services) that these tests
stop and start. Four clients send messages into one room without pause; each request
uses a new connection (so the kernel may pick either worker) and a failed request is
retried with the same transaction ID until it is acknowledged. Afterwards the room's
stored history must hold every acknowledged event exactly once, in one chain.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from tests.scale.checks import assert_exactly_once, assert_linear_chain, room_rows
from tests.scale.matrix import CS, SendLog, call, continuous_sender, register
from tests.scale.services import PrivatePostgres, PrivateRedis, SottoProcesses, probe

pytestmark = pytest.mark.timeout(150)

SENDERS = 4


@pytest.fixture
async def cluster(
    workdir: Path, private_pg: PrivatePostgres, private_redis: PrivateRedis
) -> AsyncIterator[tuple[SottoProcesses, str]]:
    db_url = await private_pg.create_database(f"faults_{uuid.uuid4().hex[:8]}")
    procs = SottoProcesses(workdir, db_url, private_redis.url)
    procs.start_supervisor(2)
    try:
        await procs.wait_ready(distinct_pids=2)
        yield procs, db_url
    finally:
        procs.stop()


async def _setup_room(base: str) -> tuple[str, list[str]]:
    tokens = [(await register(base, f"load{i}"))[1] for i in range(SENDERS)]
    async with aiohttp.ClientSession() as s:
        status, body = await call(s, "POST", base + CS + "/createRoom", tokens[0], {"preset": "public_chat"})
        assert status == 200, body
        room_id = str(body["room_id"])
        for token in tokens[1:]:
            status, body = await call(s, "POST", f"{base}{CS}/join/{quote(room_id)}", token, {})
            assert status == 200, body
    return room_id, tokens


@asynccontextmanager
async def load(base: str, room_id: str, tokens: list[str]) -> AsyncIterator[list[SendLog]]:
    stop = asyncio.Event()
    logs = [SendLog() for _ in tokens]
    tasks = [
        asyncio.create_task(continuous_sender([base], token, room_id, f"c{i}", stop, logs[i]))
        for i, token in enumerate(tokens)
    ]
    try:
        yield logs
    finally:
        stop.set()
        # Each sender finishes (acknowledges) the message it is on.
        await asyncio.gather(*tasks)


def acked(logs: list[SendLog]) -> int:
    return sum(len(log.acked) for log in logs)


async def wait_status(base: str, want: int, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = await probe(base, "/_sotto/ready")
        if status == want:
            return dict(body or {})
        await asyncio.sleep(0.05)
    raise AssertionError(f"/_sotto/ready never answered {want} within {timeout}s")


async def _verify(db_url: str, room_id: str, logs: list[SendLog]) -> int:
    rows = await room_rows(db_url, room_id)
    count = assert_exactly_once(rows, logs)
    assert_linear_chain(rows)
    return count


async def test_kill_9_a_worker_under_load(cluster: tuple[SottoProcesses, str]) -> None:
    procs, db_url = cluster
    base = procs.base_url()
    room_id, tokens = await _setup_room(base)
    async with load(base, room_id, tokens) as logs:
        await asyncio.sleep(1.5)
        before = acked(logs)
        status, body = await probe(base, "/_sotto/health")
        assert status == 200
        victim = int(body["pid"])
        os.kill(victim, signal.SIGKILL)
        # The supervisor replaces it; meanwhile the other worker takes every retry.
        survivors = await procs.wait_ready(distinct_pids=2, timeout=30)
        assert victim not in survivors
        await asyncio.sleep(1.0)
        assert acked(logs) > before
    count = await _verify(db_url, room_id, logs)
    assert count >= 20
    assert sum(log.retries for log in logs) >= 0


async def test_postgres_restart_under_load(
    cluster: tuple[SottoProcesses, str], private_pg: PrivatePostgres
) -> None:
    procs, db_url = cluster
    base = procs.base_url()
    room_id, tokens = await _setup_room(base)
    async with load(base, room_id, tokens) as logs:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(private_pg.stop)
        down = await wait_status(base, 503, timeout=10)
        assert down["database"] is False
        during = acked(logs)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(private_pg.start)
        await wait_status(base, 200, timeout=20)
        await procs.wait_ready(distinct_pids=2, timeout=20)
        await asyncio.sleep(1.5)
        assert acked(logs) > during + 5, "sending did not resume after the restart"
    await _verify(db_url, room_id, logs)


async def test_redis_restart_under_load(
    cluster: tuple[SottoProcesses, str], private_redis: PrivateRedis
) -> None:
    procs, db_url = cluster
    base = procs.base_url()
    room_id, tokens = await _setup_room(base)
    async with load(base, room_id, tokens) as logs:
        await asyncio.sleep(1.0)
        private_redis.stop()
        down = await wait_status(base, 503, timeout=10)
        assert down["redis"] is False
        # Without Redis, long-polls are still woken (by polling the database).
        await _sync_wakes(base, tokens[0], room_id, tokens[1], within=3.0)
        during = acked(logs)
        private_redis.start()
        await wait_status(base, 200, timeout=20)
        await procs.wait_ready(distinct_pids=2, timeout=20)
        await asyncio.sleep(1.0)
        assert acked(logs) > during
    await _sync_wakes(base, tokens[0], room_id, tokens[1], within=1.0)
    await _verify(db_url, room_id, logs)


async def _sync_wakes(base: str, reader: str, room_id: str, writer: str, within: float) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        status, body = await call(s, "GET", base + CS + "/sync", reader, params={"timeout": "0"})
        assert status == 200
        params = {"timeout": "10000", "since": body["next_batch"]}
        poll = asyncio.create_task(call(s, "GET", base + CS + "/sync", reader, params=params))
        await asyncio.sleep(0.3)
        txn = uuid.uuid4().hex
        start = time.monotonic()
        content = {"msgtype": "m.text", "body": f"wake-{txn}"}
        url = f"{base}{CS}/rooms/{quote(room_id)}/send/m.room.message/{txn}"
        status, sent = await call(s, "PUT", url, writer, json=content)
        assert status == 200, sent
        status, body = await poll
        assert status == 200
        assert time.monotonic() - start < within
        assert room_id in body["rooms"]["join"]
