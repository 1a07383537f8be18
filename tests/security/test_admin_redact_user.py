"""Redacting a user's events in bulk (POST /_synapse/admin/v1/user/{userId}/redact and
GET /_synapse/admin/v1/user/redact_status/{redactId}), as Synapse has it."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.security.support import Client, FakeClock, raw
from tests.security.test_admin_api import A1, user
from tests.support.server import RunningServer


def redact_path(user_id: str) -> str:
    return f"{A1}/user/{quote(user_id)}/redact"


async def redact(admin: Client, user_id: str, **body: Any) -> dict[str, Any]:
    """Start a job and wait (a bounded poll of its status) until it has ended."""
    redact_id = (await admin.ok("POST", redact_path(user_id), json=body))["redact_id"]
    assert isinstance(redact_id, str) and redact_id
    for _ in range(500):
        status: dict[str, Any] = await admin.ok("GET", f"{A1}/user/redact_status/{quote(redact_id)}")
        assert status["status"] in ("scheduled", "active", "complete", "failed"), status
        assert isinstance(status["failed_redactions"], dict)
        if status["status"] in ("complete", "failed"):
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"redaction {redact_id} did not end: {status}")


async def event(client: Client, room: str, event_id: str) -> dict[str, Any]:
    out: dict[str, Any] = await client.ok("GET", f"/rooms/{quote(room)}/event/{quote(event_id)}")
    return out


async def redaction_of(client: Client, room: str, event_id: str) -> dict[str, Any]:
    """The redaction of an event, as a client sees it; fails if it is not redacted."""
    seen = await event(client, room, event_id)
    because = seen["unsigned"].get("redacted_because")
    assert because is not None, seen
    assert seen["content"] in ({}, {"membership": "join"}), seen
    return await event(client, room, because["event_id"])


async def redactions_in(client: Client, room: str) -> list[str]:
    """The targets of every redaction in the room's timeline (the whole of it, in these tests)."""
    page = await client.ok("GET", f"/rooms/{quote(room)}/messages", params={"dir": "b", "limit": "1000"})
    return [e["redacts"] for e in page["chunk"] if e["type"] == "m.room.redaction"]


async def join_event(client: Client, room: str, user_id: str) -> str:
    members = await client.ok("GET", f"/rooms/{quote(room)}/members")
    found = [e for e in members["chunk"] if e["state_key"] == user_id]
    assert len(found) == 1 and found[0]["content"]["membership"] == "join"
    return str(found[0]["event_id"])


async def test_a_spammers_messages_are_redacted_by_the_spammer(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(server, http, "root", admin=True)
    spammer = await user(server, http, "spammer")
    alice = await user(server, http, "alice")
    await spammer.ok("PUT", f"/profile/{quote(spammer.user_id)}/displayname", json={"displayname": "BUY NOW"})
    rooms = [await alice.room_with(spammer), await alice.room_with(spammer)]
    spam = {room: [await spammer.send(room, f"spam {i}", f"{room}{i}") for i in range(2)] for room in rooms}
    kept = {room: await alice.send(room, "hello", f"a{room}") for room in rooms}
    # One the spammer already redacted themselves: not redacted a second time.
    own = await spammer.ok("PUT", f"/rooms/{quote(rooms[0])}/redact/{quote(spam[rooms[0]][0])}/r1", json={})
    joins = {room: await join_event(alice, room, spammer.user_id) for room in rooms}

    status = await redact(admin, spammer.user_id, rooms=[], reason="spam")
    assert status == {"status": "complete", "failed_redactions": {}}

    for room in rooms:
        for event_id in spam[room][1:]:
            redaction = await redaction_of(alice, room, event_id)
            assert redaction["sender"] == spammer.user_id  # puppeted
            assert redaction["content"]["reason"] == "spam"
        # Their join (display name, avatar) too: only the membership remains.
        assert (await event(alice, room, joins[room]))["content"] == {"membership": "join"}
        assert (await redaction_of(alice, room, joins[room]))["sender"] == spammer.user_id
        assert (await event(alice, room, kept[room]))["content"]["body"] == "hello"
    first = await redaction_of(alice, rooms[0], spam[rooms[0]][0])
    assert first["event_id"] == own["event_id"]
    assert (await redactions_in(alice, rooms[0])).count(spam[rooms[0]][0]) == 1
    # Alice's own join and her room's state are untouched.
    alice_join = await event(alice, rooms[0], await join_event(alice, rooms[0], alice.user_id))
    assert "redacted_because" not in alice_join["unsigned"]

    # Again: everything is redacted already, so nothing new is sent.
    before = {room: await redactions_in(alice, room) for room in rooms}
    assert await redact(admin, spammer.user_id, rooms=[]) == {"status": "complete", "failed_redactions": {}}
    assert {room: await redactions_in(alice, room) for room in rooms} == before


async def test_rooms_and_use_admin(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    spammer = await user(server, http, "spammer")
    alice = await user(server, http, "alice")
    moderated = await admin.room_with(spammer, alice)  # the admin has power level 100 here
    other = await alice.room_with(spammer)
    in_moderated = await spammer.send(moderated, "spam", "m1")
    in_other = await spammer.send(other, "spam", "o1")

    status = await redact(admin, spammer.user_id, rooms=[moderated], use_admin=True)
    assert status == {"status": "complete", "failed_redactions": {}}
    assert (await redaction_of(alice, moderated, in_moderated))["sender"] == admin.user_id
    # The room not named is left alone.
    assert (await event(alice, other, in_other))["content"]["body"] == "spam"

    # Where the admin may not redact (in the room without the power level, or not in it at
    # all), each redaction fails and is reported; the job itself completes, as Synapse's does.
    unpowered = await alice.room_with(spammer, admin)
    in_unpowered = await spammer.send(unpowered, "spam", "u1")
    status = await redact(admin, spammer.user_id, rooms=[unpowered, other], use_admin=True)
    assert status["status"] == "complete"
    failed = status["failed_redactions"]
    expected = {
        in_unpowered,
        in_other,
        await join_event(alice, unpowered, spammer.user_id),
        await join_event(alice, other, spammer.user_id),
    }
    assert set(failed) == expected
    assert all(isinstance(why, str) and why for why in failed.values())
    assert (await event(alice, unpowered, in_unpowered))["content"]["body"] == "spam"
    assert (await event(alice, other, in_other))["content"]["body"] == "spam"
    assert await redactions_in(alice, unpowered) == []


async def test_a_spammer_who_left_has_their_messages_redacted_by_the_admin(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(server, http, "root", admin=True)
    spammer = await user(server, http, "spammer")
    alice = await user(server, http, "alice")
    banned_from = await admin.room_with(spammer, alice)
    left = await admin.room_with(spammer, alice)
    spam = {room: await spammer.send(room, "spam", f"s{room}") for room in (banned_from, left)}
    await admin.ok("POST", f"/rooms/{quote(banned_from)}/ban", json={"user_id": spammer.user_id})
    await spammer.ok("POST", f"/rooms/{quote(left)}/leave", json={})
    # Not in those rooms any more, the spammer can send nothing there: the admin redacts.
    # The rooms are found although the spammer is no longer in them.
    status = await redact(admin, spammer.user_id, rooms=[])
    assert status == {"status": "complete", "failed_redactions": {}}
    for room in (banned_from, left):
        assert (await redaction_of(alice, room, spam[room]))["sender"] == admin.user_id
    # Memberships other than joins (their leave, the ban) are kept, as Synapse keeps them.
    page = await alice.ok("GET", f"/rooms/{quote(left)}/messages", params={"dir": "b"})
    leave = [e for e in page["chunk"] if e["type"] == "m.room.member" and e["sender"] == spammer.user_id]
    assert [e["content"]["membership"] for e in leave] == ["leave", "join"]
    assert "redacted_because" not in leave[0]["unsigned"]
    assert "redacted_because" in leave[1]["unsigned"]


async def test_time_window_and_limit(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    spammer = await user(server, http, "spammer")
    alice = await user(server, http, "alice")
    room = await alice.room_with(spammer)
    join = await join_event(alice, room, spammer.user_id)
    # Messages one second apart, all later than the join.
    clock = FakeClock(time.time() + 60)
    real_clock, server.hs.creator.clock = server.hs.creator.clock, clock
    try:
        sent = []
        for i in range(6):
            clock.now += 1
            sent.append(await spammer.send(room, f"spam {i}", f"t{i}"))
    finally:
        server.hs.creator.clock = real_clock
    ts = [(await event(alice, room, e))["origin_server_ts"] for e in sent]
    assert ts == sorted(set(ts))

    status = await redact(admin, spammer.user_id, rooms=[room], after_ts=ts[2], before_ts=ts[4])
    assert status == {"status": "complete", "failed_redactions": {}}
    redacted = set(await redactions_in(alice, room))
    assert redacted == {sent[2], sent[3], sent[4]}  # both bounds inclusive

    # limit: the newest 3 of the user's events are looked at (5, 4 and 3; two already done).
    status = await redact(admin, spammer.user_id, rooms=[room], limit=3)
    assert status == {"status": "complete", "failed_redactions": {}}
    assert set(await redactions_in(alice, room)) == redacted | {sent[5]}
    for event_id in (sent[0], sent[1]):
        assert "redacted_because" not in (await event(alice, room, event_id))["unsigned"]
    assert "redacted_because" not in (await event(alice, room, join))["unsigned"]


async def test_errors(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    spammer = await user(server, http, "spammer")
    room = await spammer.create_room()
    path = redact_path(spammer.user_id)
    status_path = f"{A1}/user/redact_status/nope"

    for token in (spammer.token, None):
        status, out, _ = await raw(http, "POST", server.base_url + path, token=token, json={"rooms": []})
        assert (status, out["errcode"]) == ((403, "M_FORBIDDEN") if token else (401, "M_MISSING_TOKEN"))
        status, out, _ = await raw(http, "GET", server.base_url + status_path, token=token)
        assert (status, out["errcode"]) == ((403, "M_FORBIDDEN") if token else (401, "M_MISSING_TOKEN"))

    status, out = await admin.request("GET", status_path)
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")
    unknown = redact_path(f"@nobody:{server.server_name}")
    status, out = await admin.request("POST", unknown, json={"rooms": []})
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")
    status, out = await admin.request("POST", path, json={"rooms": ["!unknown:" + server.server_name]})
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")

    bad = [
        ({}, "M_MISSING_PARAM"),
        ({"rooms": room}, "M_BAD_JSON"),
        ({"rooms": [1]}, "M_BAD_JSON"),
        ({"rooms": ["not-a-room"]}, "M_INVALID_PARAM"),
        ({"rooms": [], "limit": "10"}, "M_BAD_JSON"),
        ({"rooms": [], "limit": True}, "M_BAD_JSON"),
        ({"rooms": [], "limit": 0}, "M_INVALID_PARAM"),
        ({"rooms": [], "use_admin": "yes"}, "M_BAD_JSON"),
        ({"rooms": [], "reason": 5}, "M_BAD_JSON"),
        ({"rooms": [], "after_ts": "1"}, "M_BAD_JSON"),
        ({"rooms": [], "after_ts": 2, "before_ts": 1}, "M_INVALID_PARAM"),
    ]
    for body, errcode in bad:
        status, out = await admin.request("POST", path, json=body)
        assert (status, out["errcode"]) == (400, errcode), (body, out)
    status, out = await admin.request("POST", redact_path("nobody"), json={"rooms": []})
    assert (status, out["errcode"]) == (400, "M_INVALID_PARAM")
    # None of that started a job or touched the room.
    assert await redactions_in(spammer, room) == []
