"""Sliding sync behind two workers on PostgreSQL + Redis: a connection's requests alternate
between the workers, and each answers from where the other left off (positions are kept
in the database), long-polls included."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.scale.matrix import CS, call, register
from tests.scale.services import SottoProcesses

pytestmark = pytest.mark.timeout(120)
SLIDING = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
BODY = {"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 5, "required_state": [["m.room.name", ""]]}}}


async def test_a_connection_moves_between_workers(workdir: Path, pg_url: str, redis_url: str) -> None:
    procs = SottoProcesses(workdir, pg_url, redis_url)
    procs.start_independent(2)
    try:
        await procs.wait_ready()
        async with aiohttp.ClientSession() as s:
            _, alice = await register(procs.base_url(0), "alice")

            async def sliding(worker: int, pos: str | None, timeout: int = 0) -> dict[str, Any]:
                params = {"timeout": str(timeout), **({"pos": pos} if pos else {})}
                url = procs.base_url(worker) + SLIDING
                status, body = await call(s, "POST", url, alice, json=BODY, params=params)
                assert status == 200, (body, procs.tail())
                return dict(body)

            async def send(worker: int, room: str, text: str) -> None:
                url = f"{procs.base_url(worker)}{CS}/rooms/{quote(room)}/send/m.room.message/{text}"
                status, body = await call(s, "PUT", url, alice, {"msgtype": "m.text", "body": text})
                assert status == 200, body

            status, body = await call(
                s, "POST", procs.base_url(0) + CS + "/createRoom", alice, json={"name": "shared"}
            )
            assert status == 200, body
            room = str(body["room_id"])
            await send(0, room, "one")
            first = await sliding(0, None)
            assert first["rooms"][room]["initial"] is True

            # Worker 1 never saw this connection: it resumes it from the database.
            await send(1, room, "two")
            second = await sliding(1, first["pos"])
            got = second["rooms"][room]
            assert "initial" not in got and [e["content"]["body"] for e in got["timeline"]] == ["two"]

            # A long-poll on worker 0 is woken by a message through worker 1.
            waiting = asyncio.ensure_future(sliding(0, second["pos"], timeout=10_000))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            await send(1, room, "three")
            third = await asyncio.wait_for(waiting, 10)
            assert [e["content"]["body"] for e in third["rooms"][room]["timeline"]] == ["three"]

            # A retry of a position (its answer lost) is answered by the other worker alike;
            # older positions are gone.
            retried = await sliding(1, second["pos"])
            assert [e["content"]["body"] for e in retried["rooms"][room]["timeline"]] == ["three"]
            await sliding(0, third["pos"])
            url = procs.base_url(1) + SLIDING
            status, err = await call(s, "POST", url, alice, json=BODY, params={"pos": first["pos"]})
            assert (status, err["errcode"]) == (400, "M_UNKNOWN_POS")
    finally:
        procs.stop()
