"""Delayed events (MSC4140, unstable, as matrix-js-sdk and Element Call use them): scheduled
with `org.matrix.msc4140.delay` on /send and /state, managed by delay ID, sent by the timer,
kept across a restart."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.support.http import RawClient
from tests.support.js import run_node_script
from tests.support.server import RunningServer, lasting_database, run_server

BASE = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
CALL = "org.matrix.msc3401.call.member"


async def client(srv: RunningServer, http: aiohttp.ClientSession, name: str) -> RawClient:
    user_id = await srv.register(name)
    token, _ = await srv.hs.auth.create_session(user_id, None, None)
    return RawClient(http, srv.base_url, token, user_id)


async def schedule(c: RawClient, path: str, body: dict[str, Any], delay: int) -> Any:
    return await c.request("PUT", path, json=body, params={"org.matrix.msc4140.delay": str(delay)})


async def action(http: aiohttp.ClientSession, srv: RunningServer, delay_id: str, act: str) -> tuple[int, Any]:
    """A management action without any access token (the delay ID is the credential)."""
    async with http.post(f"{srv.base_url}{BASE}/{quote(delay_id)}/{act}", json={}) as resp:
        return resp.status, await resp.json()


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    for _ in range(int(timeout / 0.05)):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def bodies(c: RawClient, room: str) -> list[str]:
    page = await c.ok("GET", f"/rooms/{quote(room)}/messages", params={"dir": "b", "limit": "50"})
    return [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]


async def test_scheduled_sent_restarted_cancelled(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await client(server, http, "alice")
    room = await alice.create_room(preset="public_chat")
    versions = await RawClient(http, server.base_url).ok("GET", "/_matrix/client/versions")
    assert versions["unstable_features"]["org.matrix.msc4140"] is True

    # A message, sent by the timer once its time comes.
    status, out = await schedule(
        alice, f"/rooms/{quote(room)}/send/m.room.message/t1", {"msgtype": "m.text", "body": "later"}, 300
    )
    assert status == 200 and set(out) == {"delay_id"}
    listed = (await alice.ok("GET", BASE))["delayed_events"]
    assert [(e["delay_id"], e["type"], e["delay"], e["content"]["body"]) for e in listed] == [
        (out["delay_id"], "m.room.message", 300, "later")
    ]
    assert "later" not in await bodies(alice, room)
    await eventually(lambda: _contains(alice, room, "later"))
    assert (await alice.ok("GET", BASE))["delayed_events"] == []
    # The same transaction again: the same delay ID, nothing scheduled twice.
    status, again = await schedule(
        alice, f"/rooms/{quote(room)}/send/m.room.message/t2", {"msgtype": "m.text", "body": "x"}, 60_000
    )
    status, same = await schedule(
        alice, f"/rooms/{quote(room)}/send/m.room.message/t2", {"msgtype": "m.text", "body": "x"}, 60_000
    )
    assert same == again and len((await alice.ok("GET", BASE))["delayed_events"]) == 1
    assert await action(http, server, again["delay_id"], "cancel") == (200, {})

    # Element Call's "left the call" state: restarted while the client lives, then sent.
    path = f"/rooms/{quote(room)}/state/{CALL}/_{quote(alice.user_id)}_DEV"
    status, out = await schedule(alice, path, {}, 60_000)
    delay_id = out["delay_id"]
    first = await alice.ok("GET", f"{BASE}/{quote(delay_id)}")
    assert first["state_key"] == f"_{alice.user_id}_DEV" and first["content"] == {}
    await asyncio.sleep(0.02)
    assert await action(http, server, delay_id, "restart") == (200, {})
    assert (await alice.ok("GET", f"{BASE}/{quote(delay_id)}"))["running_since"] > first["running_since"]
    assert await action(http, server, delay_id, "send") == (200, {})
    assert await alice.ok("GET", path) == {}
    for act in ("send", "cancel", "restart"):
        status, err = await action(http, server, delay_id, act)
        assert (status, err["errcode"]) == (404, "M_NOT_FOUND")

    # Cancelled: never sent.
    status, out = await schedule(
        alice, f"/rooms/{quote(room)}/send/m.room.message/t3", {"msgtype": "m.text", "body": "never"}, 200
    )
    async with http.post(
        f"{server.base_url}{BASE}/{quote(out['delay_id'])}", json={"action": "cancel"}
    ) as resp:
        assert resp.status == 200  # the earlier form, the action in the body
    await asyncio.sleep(0.5)
    assert "never" not in await bodies(alice, room)


async def test_state_set_by_another_cancels_it(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await client(server, http, "alice")
    bob = await client(server, http, "bob")
    levels = {"users": {bob.user_id: 50}}  # alice creates the room (room version 12)
    room = await alice.create_room(preset="public_chat", power_level_content_override=levels)
    await bob.join(room)
    topic = f"/rooms/{quote(room)}/state/m.room.topic"
    _, mine = await schedule(alice, topic, {"topic": "alice's, later"}, 60_000)
    _, name = await schedule(alice, f"/rooms/{quote(room)}/state/m.room.name", {"name": "kept"}, 60_000)
    await alice.ok("PUT", topic, json={"topic": "alice's own, now"})  # her own: nothing cancelled
    assert len((await alice.ok("GET", BASE))["delayed_events"]) == 2
    await bob.ok("PUT", topic, json={"topic": "bob's"})
    assert [e["delay_id"] for e in (await alice.ok("GET", BASE))["delayed_events"]] == [name["delay_id"]]
    assert (await action(http, server, mine["delay_id"], "send"))[0] == 404
    assert await alice.ok("GET", topic) == {"topic": "bob's"}


async def test_deactivation_drops_the_schedule(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await client(server, http, "dora")
    bob = await client(server, http, "dave")
    room = await alice.create_room(preset="public_chat")
    await bob.join(room)
    _, later = await schedule(alice, f"/rooms/{quote(room)}/send/m.room.message/t1", {"body": "x"}, 60_000)
    _, kept = await schedule(bob, f"/rooms/{quote(room)}/send/m.room.message/t1", {"body": "y"}, 60_000)
    auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id}}
    await alice.ok("POST", "/account/deactivate", json={"auth": {**auth, "password": "password"}})
    # Her delay ID no longer names anything; bob's schedule is untouched.
    assert (await action(http, server, later["delay_id"], "send"))[0] == 404
    assert [e["delay_id"] for e in (await bob.ok("GET", BASE))["delayed_events"]] == [kept["delay_id"]]


async def test_refusals(tmp_path: object, http: aiohttp.ClientSession) -> None:
    async with run_server(
        str(tmp_path), delayed_events={"max_delay_ms": 3_600_000, "max_per_user": 2}
    ) as srv:
        alice = await client(srv, http, "alice")
        bob = await client(srv, http, "bob")
        room = await alice.create_room(preset="public_chat")
        send = f"/rooms/{quote(room)}/send/m.room.message/"
        message = {"msgtype": "m.text", "body": "x"}
        for delay, errcode in (("0", "M_INVALID_PARAM"), ("soon", "M_INVALID_PARAM")):
            status, out = await alice.request(
                "PUT", send + "a", json=message, params={"org.matrix.msc4140.delay": delay}
            )
            assert (status, out["errcode"]) == (400, errcode)
        status, out = await schedule(alice, send + "b", message, 3_600_001)
        assert (status, out["errcode"], out["max_delay"]) == (400, "M_MAX_DELAY_EXCEEDED", 3_600_000)
        status, out = await schedule(
            alice,
            f"/rooms/{quote(room)}/state/m.room.member/{quote(alice.user_id)}",
            {"membership": "leave"},
            1000,
        )
        assert (status, out["errcode"]) == (400, "M_INVALID_PARAM")
        status, out = await schedule(bob, send + "c", message, 1000)  # bob is not in the room
        assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
        ids = [(await schedule(alice, send + f"d{i}", message, 60_000))[1]["delay_id"] for i in range(2)]
        status, out = await schedule(alice, send + "e", message, 60_000)
        assert (status, out["errcode"]) == (429, "M_LIMIT_EXCEEDED") and out["retry_after_ms"] > 0
        # Only its owner reads a delayed event; anyone holding its ID may act on it.
        status, out = await bob.request("GET", f"{BASE}/{quote(ids[0])}")
        assert (status, out["errcode"]) == (404, "M_NOT_FOUND")
        assert (await bob.ok("GET", BASE))["delayed_events"] == []
        assert (await action(http, srv, ids[0], "explode"))[0] == 400
        assert (await action(http, srv, "syd_nope", "send"))[0] == 404
        # Sent after all, but no longer allowed: the sender's error, and it is gone.
        await alice.ok("POST", f"/rooms/{quote(room)}/leave", json={})
        status, out = await action(http, srv, ids[1], "send")
        assert (status, out["errcode"]) == (403, "M_FORBIDDEN")


async def test_the_schedule_outlives_a_restart(tmp_path: object, http: aiohttp.ClientSession) -> None:
    async with lasting_database() as db:
        async with run_server(str(tmp_path), **db) as first:
            alice = await client(first, http, "alice")
            room = await alice.create_room(preset="public_chat")
            status, _ = await schedule(
                alice,
                f"/rooms/{quote(room)}/send/m.room.message/t1",
                {"msgtype": "m.text", "body": "after"},
                500,
            )
            assert status == 200
            name = first.server_name
        async with run_server(str(tmp_path), server_name=name, **db) as second:
            token, _ = await second.hs.auth.create_session(alice.user_id, None, None)
            again = RawClient(http, second.base_url, token, alice.user_id)
            await eventually(lambda: _contains(again, room, "after"))


async def _contains(c: RawClient, room: str, body: str) -> bool:
    return body in await bodies(c, room)


async def test_matrix_js_sdk_schedules_and_manages(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    login = await server.login("caller")
    token = login["access_token"]
    caller = RawClient(http, server.base_url, token, login["user_id"])
    room = await caller.create_room(preset="public_chat")
    env = {
        "HS_URL": server.base_url,
        "USER_ID": login["user_id"],
        "ACCESS_TOKEN": token,
        "DEVICE_ID": login["device_id"],
        "ROOM_ID": room,
    }
    result = await run_node_script("delayed_client.mjs", env)
    assert result == {
        "scheduled": ["m.room.message", CALL],
        "left": 0,
        "bodies": ["from js, delayed"],
    }
