"""State one worker sets and the other must act on, with two workers on PostgreSQL + Redis:
a delayed event scheduled on either worker is sent by whichever leads "delayed-events", and
an admin's rate limit override made on one worker holds on the other."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.storage.accounts import AccountStore
from homeserver.storage.engine import Database
from tests.scale.matrix import CS, call, register
from tests.scale.services import SottoProcesses

pytestmark = pytest.mark.timeout(120)
DELAYED = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"


async def _messages(s: aiohttp.ClientSession, url: str, room: str, token: str) -> list[str]:
    status, body = await call(s, "GET", f"{url}{CS}/rooms/{quote(room)}/messages", token, params={"dir": "b"})
    assert status == 200, body
    return [e["content"].get("body") for e in body["chunk"] if e["type"] == "m.room.message"]


async def test_delayed_events_and_rate_limit_overrides_across_workers(
    workdir: Path, pg_url: str, redis_url: str
) -> None:
    procs = SottoProcesses(workdir, pg_url, redis_url)
    procs.extra_config = {"rate_limits": {"enabled": True, "messages_per_second": 0.01, "messages_burst": 3}}
    procs.start_independent(2)
    try:
        await procs.wait_ready()
        urls = [procs.base_url(0), procs.base_url(1)]
        alice_id, alice = await register(urls[0], "alice")
        admin_id, admin = await register(urls[0], "root")
        db = Database(pg_url)
        try:
            await AccountStore(db).set_admin(admin_id, True)
        finally:
            await db.close()
        async with aiohttp.ClientSession() as s:
            status, body = await call(
                s, "POST", urls[0] + CS + "/createRoom", alice, json={"preset": "public_chat"}
            )
            assert status == 200, body
            room = str(body["room_id"])
            # Scheduled on each worker; whichever leads sends both when due.
            for i, url in enumerate(urls):
                path = f"{url}{CS}/rooms/{quote(room)}/send/m.room.message/d{i}"
                status, body = await call(
                    s,
                    "PUT",
                    path,
                    alice,
                    json={"msgtype": "m.text", "body": f"delayed {i}"},
                    params={"org.matrix.msc4140.delay": "300"},
                )
                assert status == 200 and "delay_id" in body, body
            for _ in range(200):
                if {"delayed 0", "delayed 1"} <= set(await _messages(s, urls[1], room, alice)):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(procs.tail())
            status, body = await call(s, "GET", urls[1] + DELAYED, alice)
            assert status == 200 and body["delayed_events"] == [], body
            # Alice has spent her burst of 3 (the room's creation is not a message; the two
            # delayed sends were). Lifted on worker 0, she may send through worker 1.
            override = f"{urls[0]}/_synapse/admin/v1/users/{quote(alice_id)}/override_ratelimit"
            status, body = await call(s, "POST", override, admin, json={})
            assert status == 200, body
            for i in range(5):
                path = f"{urls[1]}{CS}/rooms/{quote(room)}/send/m.room.message/after{i}"
                status, body = await call(s, "PUT", path, alice, json={"msgtype": "m.text", "body": "x"})
                assert status == 200, (i, body)
    finally:
        procs.stop()
