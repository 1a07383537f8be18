"""An application service behind two workers on PostgreSQL + Redis: it gets the messages
sent through either worker, in order, each in one transaction only, and keeps getting
them after the worker that was sending to it is killed."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from tests.scale.matrix import CS, call, register
from tests.scale.services import SottoProcesses
from tests.support.appservice import AS_TOKEN, Receiver, write_registration
from tests.support.server import free_port

pytestmark = pytest.mark.timeout(120)


async def _until(check: object, what: str, seconds: float = 30.0) -> None:
    assert callable(check)
    for _ in range(int(seconds / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    assert check(), what


def log_of(workdir: Path, procs: SottoProcesses, i: int) -> str:
    return (workdir / f"serve-{procs.ports[i]}.log").read_text(errors="replace")


async def test_a_service_follows_both_workers_and_outlives_its_sender(
    workdir: Path, pg_url: str, redis_url: str
) -> None:
    as_port = free_port()
    receiver = Receiver()
    procs = SottoProcesses(workdir, pg_url, redis_url)
    # INFO: the log says which worker leads the sending.
    procs.extra_config = {"app_services": [write_registration(str(workdir), as_port)], "log_level": "INFO"}
    procs.start_independent(2)
    try:
        await procs.wait_ready()
        async with receiver.running(as_port), aiohttp.ClientSession() as s:
            _, alice = await register(procs.base_url(0), "alice")
            status, body = await call(
                s, "POST", procs.base_url(0) + CS + "/createRoom", alice, json={"preset": "public_chat"}
            )
            assert status == 200, body
            room = str(body["room_id"])
            status, body = await call(s, "POST", f"{procs.base_url(1)}{CS}/join/{quote(room)}", AS_TOKEN, {})
            assert status == 200, body
            sent: list[str] = []

            async def send(worker: int, n: int) -> None:
                for i in range(n):
                    text = f"w{worker}-{len(sent)}"
                    url = f"{procs.base_url(worker)}{CS}/rooms/{quote(room)}/send/m.room.message/{text}-{i}"
                    status, body = await call(s, "PUT", url, alice, {"msgtype": "m.text", "body": text})
                    assert status == 200, body
                    sent.append(text)

            for _ in range(3):
                await send(0, 2)
                await send(1, 2)
            await _until(lambda: receiver.bodies(room) == sent, "every message, in the order sent")
            # Kill the worker that sends to the service outright: the other takes over.
            leader = next(i for i in (0, 1) if "now leads appservice-sender" in log_of(workdir, procs, i))
            procs.procs[leader].send_signal(signal.SIGKILL)
            procs.procs[leader].wait()
            await send(1 - leader, 5)
            await _until(lambda: receiver.bodies(room) == sent, f"the rest, after the kill: {procs.tail()}")
            ids = [e["event_id"] for _, events in receiver.transactions for e in events]
            assert len(ids) == len(set(ids)), "an event came in two transactions"
    finally:
        procs.stop()
