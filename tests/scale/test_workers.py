"""Several workers on one PostgreSQL database with Redis: notifications, ordering, dedup, leadership.

Two independent `sotto serve` processes of one homeserver run on two ports (as behind a
load balancer), so each test can choose which worker a request reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.storage.accounts import AccountStore
from homeserver.storage.engine import Database
from tests.scale.checks import assert_exactly_once, assert_linear_chain, room_rows
from tests.scale.matrix import CS, SendLog, call, register, send_until_acked
from tests.scale.services import SottoProcesses
from tests.support.push_gateway import gateway

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def two_workers(workdir: Path, pg_url: str, redis_url: str) -> AsyncIterator[SottoProcesses]:
    procs = SottoProcesses(workdir, pg_url, redis_url)
    procs.start_independent(2)
    try:
        await procs.wait_ready()
        yield procs
    finally:
        procs.stop()


async def _room_with_members(procs: SottoProcesses, n: int) -> tuple[str, list[tuple[str, str]]]:
    users = [await register(procs.base_url(i % 2), f"u{i}") for i in range(n)]
    async with aiohttp.ClientSession() as s:
        owner = users[0][1]
        status, body = await call(
            s, "POST", procs.base_url(0) + CS + "/createRoom", owner, json={"preset": "public_chat"}
        )
        assert status == 200, body
        room_id = str(body["room_id"])
        for i, (_, token) in enumerate(users[1:], start=1):
            url = f"{procs.base_url(i % 2)}{CS}/join/{quote(room_id)}"
            status, body = await call(s, "POST", url, token, {})
            assert status == 200, body
    return room_id, users


def _sender(
    session: aiohttp.ClientSession, base_url: str, room_id: str, token: str
) -> Callable[[], Awaitable[None]]:
    """A function that sends one more message to the room through `base_url`."""
    sent = 0

    async def send() -> None:
        nonlocal sent
        sent += 1
        path = f"{base_url}{CS}/rooms/{quote(room_id)}/send/m.room.message/s{sent}"
        status, body = await call(session, "PUT", path, token, json={"msgtype": "m.text", "body": "x"})
        assert status == 200, body

    return send


async def test_sync_on_one_worker_wakes_for_a_send_on_the_other(
    two_workers: SottoProcesses, pg_url: str
) -> None:
    room_id, users = await _room_with_members(two_workers, 2)
    (_, alice), (_, bob) = users
    a_url, b_url = two_workers.base_url(0), two_workers.base_url(1)
    async with aiohttp.ClientSession() as s:
        status, body = await call(s, "GET", b_url + CS + "/sync", bob, params={"timeout": "0"})
        assert status == 200
        since = body["next_batch"]
        latencies = []
        for i in range(5):
            poll = asyncio.create_task(
                call(s, "GET", b_url + CS + "/sync", bob, params={"timeout": "10000", "since": since})
            )
            await asyncio.sleep(0.2)  # the long-poll is now waiting on worker B
            start = time.monotonic()
            status, sent = await call(
                s,
                "PUT",
                f"{a_url}{CS}/rooms/{quote(room_id)}/send/m.room.message/w{i}",
                alice,
                json={"msgtype": "m.text", "body": f"hello {i}"},
            )
            assert status == 200, sent
            status, body = await poll
            latencies.append(time.monotonic() - start)
            assert status == 200
            timeline = body["rooms"]["join"][room_id]["timeline"]["events"]
            assert [e["event_id"] for e in timeline] == [sent["event_id"]]
            since = body["next_batch"]
        # Woken by Redis, not by the 10 s timeout or the database poll.
        assert max(latencies) < 1.0, latencies
        # A token issued by worker B is valid on worker A: nothing repeats, nothing is missed.
        params = {"timeout": "0", "since": since}
        status, body = await call(s, "GET", a_url + CS + "/sync", alice, params=params)
        assert status == 200
        assert room_id not in body["rooms"]["join"]


async def test_concurrent_sends_on_both_workers_keep_one_chain(
    two_workers: SottoProcesses, pg_url: str
) -> None:
    room_id, users = await _room_with_members(two_workers, 6)
    urls = [two_workers.base_url(0), two_workers.base_url(1)]
    logs = [SendLog() for _ in users]

    async def sender(i: int) -> None:
        # Each user alternates workers, so both workers write to the room all the time.
        for n in range(15):
            txn = f"s{i}-{n}"
            await send_until_acked([urls[(i + n) % 2]], users[i][1], room_id, txn, txn, logs[i])

    await asyncio.gather(*(sender(i) for i in range(len(users))))
    rows = await room_rows(pg_url, room_id)
    assert assert_exactly_once(rows, logs) == 6 * 15
    assert_linear_chain(rows)
    assert len({r.stream_id for r in rows}) == len(rows)


async def test_state_changed_on_one_worker_is_enforced_by_the_other(
    two_workers: SottoProcesses, pg_url: str
) -> None:
    """Each worker caches the auth state it builds events from; a change stored by the other
    worker must reach that cache before the next event (power levels, both ways)."""
    room_id, users = await _room_with_members(two_workers, 2)
    (_, alice), (_, bob) = users
    a_url, b_url = two_workers.base_url(0), two_workers.base_url(1)
    room = f"{CS}/rooms/{quote(room_id)}"
    message = {"msgtype": "m.text", "body": "x"}
    async with aiohttp.ClientSession() as s:

        async def send(url: str, token: str, txn: str) -> tuple[int, Any]:
            return await call(s, "PUT", f"{url}{room}/send/m.room.message/{txn}", token, json=message)

        async def topic(url: str, token: str, text: str) -> tuple[int, Any]:
            return await call(s, "PUT", f"{url}{room}/state/m.room.topic/", token, json={"topic": text})

        async def set_power(bob_level: int) -> None:
            status, levels = await call(s, "GET", f"{b_url}{room}/state/m.room.power_levels/", alice)
            assert status == 200, levels
            levels.update(events_default=50, state_default=50)
            levels.setdefault("events", {}).pop("m.room.topic", None)
            levels.setdefault("users", {})[users[1][0]] = bob_level
            status, body = await call(
                s, "PUT", f"{b_url}{room}/state/m.room.power_levels/", alice, json=levels
            )
            assert status == 200, body

        await set_power(50)
        # Worker A builds events for Bob (a message and a state event), caching his rights.
        assert (await send(a_url, bob, "t1"))[0] == 200
        assert (await topic(a_url, bob, "first"))[0] == 200
        # Worker B takes them away; worker A must refuse both kinds of event.
        await set_power(0)
        status, body = await send(a_url, bob, "t2")
        assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body
        status, body = await topic(a_url, bob, "second")
        assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body
        # And gives them back (A now caches the refusal's state); worker A must accept again.
        await set_power(50)
        assert (await send(a_url, bob, "t3"))[0] == 200
        assert (await topic(a_url, bob, "third"))[0] == 200
    rows = await room_rows(pg_url, room_id)
    assert_linear_chain(rows)


async def test_leaving_on_one_worker_stops_messages_sent_to_the_other(two_workers: SottoProcesses) -> None:
    """/send trusts a worker's cached "join" to skip its membership query; a leave stored by
    the other worker must still refuse the next message (the event creator's check)."""
    room_id, users = await _room_with_members(two_workers, 2)
    (_, bob) = users[1]
    a_url, b_url = two_workers.base_url(0), two_workers.base_url(1)
    room = f"{CS}/rooms/{quote(room_id)}"
    message = {"msgtype": "m.text", "body": "x"}
    async with aiohttp.ClientSession() as s:
        status, body = await call(s, "PUT", f"{a_url}{room}/send/m.room.message/l1", bob, json=message)
        assert status == 200, body  # worker A now caches Bob's join
        status, body = await call(s, "POST", f"{b_url}{room}/leave", bob, json={})
        assert status == 200, body
        status, body = await call(s, "PUT", f"{a_url}{room}/send/m.room.message/l2", bob, json=message)
        assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body


async def test_revoked_token_is_refused_by_the_other_worker(two_workers: SottoProcesses) -> None:
    """Each worker caches access tokens; logging out on one must end the token on the other."""
    a_url, b_url = two_workers.base_url(0), two_workers.base_url(1)
    user_id, token = await register(a_url, "leaver")
    async with aiohttp.ClientSession() as s:
        # Worker B has the token cached, then worker A revokes it.
        status, body = await call(s, "GET", b_url + CS + "/account/whoami", token)
        assert (status, body.get("user_id")) == (200, user_id), body
        status, body = await call(s, "POST", a_url + CS + "/logout", token, json={})
        assert status == 200, body
        for _ in range(100):
            status, body = await call(s, "GET", b_url + CS + "/account/whoami", token)
            if status == 401:
                break
            await asyncio.sleep(0.05)
        assert (status, body.get("errcode")) == (401, "M_UNKNOWN_TOKEN"), body


async def test_push_caches_follow_changes_made_on_the_other_worker(two_workers: SottoProcesses) -> None:
    """Worker A evaluates push rules from cached rulesets and room members; a rule removed
    and a member who joined on worker B must both reach those caches."""
    room_id, users = await _room_with_members(two_workers, 2)
    (_, alice), (_, bob) = users
    carol_id, carol = await register(two_workers.base_url(1), "carol")
    a_url, b_url = two_workers.base_url(0), two_workers.base_url(1)
    rule = f"{CS}/pushrules/global/room/{quote(room_id)}"
    async with aiohttp.ClientSession() as s:
        send_on_a = _sender(s, a_url, room_id, alice)

        async def count(token: str) -> int:
            status, body = await call(s, "GET", b_url + CS + "/sync", token, params={"timeout": "0"})
            assert status == 200, body
            room = body["rooms"]["join"].get(room_id, {})
            return int(room.get("unread_notifications", {}).get("notification_count", 0))

        async def notified_eventually(token: str) -> bool:
            for _ in range(40):
                await send_on_a()
                if await count(token) > 0:
                    return True
                await asyncio.sleep(0.05)
            return False

        # Bob mutes the room (on B); worker A caches his ruleset while evaluating.
        status, body = await call(s, "PUT", b_url + rule, bob, json={"actions": []})
        assert status == 200, body
        await send_on_a()
        assert await count(bob) == 0
        # He unmutes it on B: A's messages must notify him again.
        status, body = await call(s, "DELETE", b_url + rule, bob)
        assert status == 200, body
        assert await notified_eventually(bob)
        # Carol joins on B after A cached the room's members: A's messages must count for her.
        status, body = await call(s, "POST", f"{b_url}{CS}/join/{quote(room_id)}", carol, json={})
        assert status == 200, body
        assert await notified_eventually(carol), carol_id


async def test_pushers_set_or_removed_on_one_worker_reach_deliveries_of_the_other(
    two_workers: SottoProcesses,
) -> None:
    """Worker A caches each user's pushers when it delivers; a pusher added, then removed,
    on worker B must change where A's next notifications go."""
    room_id, users = await _room_with_members(two_workers, 2)
    (_, alice), (_, bob) = users
    a_url, b_url = two_workers.base_url(0), two_workers.base_url(1)
    async with gateway() as gw, aiohttp.ClientSession() as s:
        send_on_a = _sender(s, a_url, room_id, alice)

        pusher = {
            "kind": "http",
            "app_id": "org.example.app",
            "pushkey": "bob-phone",
            "app_display_name": "Example",
            "device_display_name": "Phone",
            "lang": "en",
            "data": {"url": gw.url},
        }
        # A learns that bob has no pusher (and would keep believing it, unaided).
        await send_on_a()
        await gw.nothing(0.5)
        status, body = await call(s, "POST", b_url + CS + "/pushers/set", bob, json=pusher)
        assert status == 200, body
        for _ in range(40):
            await send_on_a()
            with contextlib.suppress(TimeoutError):
                notification = await gw.next(0.25)
                break
        else:
            raise AssertionError("worker A never delivered to the pusher set on worker B")
        assert notification["devices"][0]["pushkey"] == "bob-phone"
        status, body = await call(s, "POST", b_url + CS + "/pushers/set", bob, json={**pusher, "kind": None})
        assert status == 200, body
        await asyncio.sleep(0.5)  # the invalidation travels through Redis
        while not gw.received.empty():  # deliveries of messages sent before the removal
            gw.received.get_nowait()
        await send_on_a()
        await gw.nothing(1.0)


async def test_typing_on_one_worker_reaches_syncs_on_the_other(two_workers: SottoProcesses) -> None:
    """Typing lives in memory: a user typing on worker A must show in a sync on worker B,
    and a token from B used on A must still see the stop."""
    room_id, users = await _room_with_members(two_workers, 2)
    (alice_id, alice), (_, bob) = users
    a_url, b_url = two_workers.base_url(0), two_workers.base_url(1)
    typing_path = f"{CS}/rooms/{quote(room_id)}/typing/{quote(alice_id)}"

    async def typers(s: aiohttp.ClientSession, url: str, since: str) -> tuple[list[str] | None, str]:
        """Long-poll until the room's typing list arrives: (user_ids, next token)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            params = {"since": since, "timeout": "5000"}
            status, body = await call(s, "GET", url + CS + "/sync", bob, params=params)
            assert status == 200, body
            since = body["next_batch"]
            room = body.get("rooms", {}).get("join", {}).get(room_id, {})
            for event in room.get("ephemeral", {}).get("events", []):
                if event["type"] == "m.typing":
                    return list(event["content"]["user_ids"]), since
        return None, since

    async with aiohttp.ClientSession() as s:
        status, body = await call(s, "GET", b_url + CS + "/sync", bob, params={"timeout": "0"})
        assert status == 200, body
        poll = asyncio.create_task(typers(s, b_url, body["next_batch"]))
        await asyncio.sleep(0.3)  # bob's long-poll is parked on B
        status, body = await call(s, "PUT", a_url + typing_path, alice, {"typing": True, "timeout": 30000})
        assert status == 200, body
        seen, since = await asyncio.wait_for(poll, 15)
        assert seen == [alice_id]
        # B's token, used on A: the stop made on A comes after it.
        status, body = await call(s, "PUT", a_url + typing_path, alice, {"typing": False})
        assert status == 200, body
        seen, _ = await typers(s, a_url, since)
        assert seen == []


async def test_registration_steps_may_reach_different_workers(
    two_workers: SottoProcesses, pg_url: str
) -> None:
    """UIA sessions live in the database: the token stage accepted by one worker and the
    dummy stage on the other complete one registration (it used to start over)."""
    db = Database(pg_url)
    try:
        await AccountStore(db).create_registration_token("hop", 1, None)
    finally:
        await db.close()
    a_url, b_url = two_workers.base_url(0) + CS, two_workers.base_url(1) + CS
    password = "hopper-Pa55word-5e2b"
    async with aiohttp.ClientSession() as s:

        async def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
            async with s.post(url, json=body) as resp:  # no access token
                return resp.status, await resp.json()

        status, body = await post(a_url + "/register", {"username": "hopper", "password": password})
        assert status == 401, body
        session = body["session"]
        token_stage = {"type": "m.login.registration_token", "token": "hop", "session": session}
        status, body = await post(b_url + "/register", {"auth": token_stage})
        assert status == 401 and body.get("completed") == ["m.login.registration_token"], body
        dummy = {"type": "m.login.dummy", "session": session}
        status, body = await post(a_url + "/register", {"auth": dummy})
        assert status == 200, body
        login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "hopper"}}
        status, body = await post(b_url + "/login", {**login, "password": password})
        assert status == 200, body


async def test_transaction_id_dedup_across_workers(two_workers: SottoProcesses, pg_url: str) -> None:
    room_id, users = await _room_with_members(two_workers, 1)
    token = users[0][1]
    path = f"{CS}/rooms/{quote(room_id)}/send/m.room.message/same-txn"
    content = {"msgtype": "m.text", "body": "x"}
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(
            *(call(s, "PUT", two_workers.base_url(i % 2) + path, token, json=content) for i in range(8))
        )
    assert all(status == 200 for status, _ in results), results
    assert len({body["event_id"] for _, body in results}) == 1
    rows = await room_rows(pg_url, room_id)
    assert sum(1 for r in rows if r.pdu["type"] == "m.room.message") == 1


async def test_one_leader_at_a_time_and_failover(pg_url: str) -> None:
    dbs = [Database(pg_url) for _ in range(2)]
    leaders = [db.leader("test-singleton", retry_s=0.1, check_s=0.2) for db in dbs]
    changes: list[tuple[int, bool]] = []
    for i, leader in enumerate(leaders):

        async def listen(value: bool, i: int = i) -> None:
            changes.append((i, value))

        leader.add_listener(listen)
    try:
        for leader in leaders:
            await leader.start()
        waits = [asyncio.ensure_future(x.wait_elected()) for x in leaders]
        await asyncio.wait(waits, timeout=5, return_when="FIRST_COMPLETED")
        for w in waits:
            w.cancel()
        await asyncio.sleep(0.5)
        assert sum(x.is_leader for x in leaders) == 1
        first = next(i for i, x in enumerate(leaders) if x.is_leader)
        await leaders[first].stop()
        other = leaders[1 - first]
        await asyncio.wait_for(other.wait_elected(), 5)
        assert other.is_leader and not leaders[first].is_leader
        assert changes == [(first, True), (first, False), (1 - first, True)]
    finally:
        for leader in leaders:
            await leader.stop()
        for db in dbs:
            await db.close()
