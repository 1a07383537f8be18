"""Sliding sync's per-user reads after the first request: one probe statement tells which
of them could find something (account data, push rules, the to-device inbox, key counts,
unread counts, device lists, receipts), and the others are skipped. Each kind of change
must still reach the next response, and a wake with none of them must stay cheap."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.integration.e2ee.fixtures import olm_user
from tests.integration.test_sliding_sync import a_list, bodies, sliding
from tests.integration.test_sync_fanout import count_queries
from tests.support.http import RawClient
from tests.support.server import RunningServer

MakeUser = Callable[[str], Awaitable[RawClient]]
EXTENSIONS = {name: {"enabled": True} for name in ("to_device", "e2ee", "account_data", "receipts", "typing")}
# A wake by a message in a held room reads five: the probe (with the memberships), the
# window's summary, the room's bump stamp, its unread counts and its timeline. Before the
# probe gated the per-user reads it was 16.
MAX_STATEMENTS_PER_QUIET_WAKE = 6


def body_of(pos_ext: dict[str, Any] | None = None) -> dict[str, Any]:
    lists = {"all": a_list([[0, 9]], 1), "dms": a_list([[0, 9]], 1, filters={"is_dm": True})}
    return {"lists": lists, "extensions": {**EXTENSIONS, **(pos_ext or {})}}


class Connection:
    """One sliding sync connection that follows its positions and to-device batches."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.pos: str | None = None
        self.since: str | None = None

    async def next(self) -> dict[str, Any]:
        extra = {"to_device": {"enabled": True, "since": self.since}} if self.since else None
        out = await sliding(self.client, body_of(extra), self.pos)
        self.pos = out["pos"]
        self.since = out["extensions"]["to_device"]["next_batch"]
        return out


async def test_a_quiet_wake_costs_few_statements(make_user: MakeUser, server: RunningServer) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    rooms = [await alice.room_with(bob, name=f"room {i}") for i in range(5)]
    conn = Connection(bob)
    await conn.next()
    await conn.next()
    await alice.send(rooms[2], "wake up", "w1")
    queries = count_queries(server)
    out = await conn.next()
    assert bodies(out["rooms"][rooms[2]]) == ["wake up"]
    assert set(out["rooms"]) == {rooms[2]}
    ext = out["extensions"]
    assert ext["to_device"]["events"] == [] and ext["account_data"] == {"global": [], "rooms": {}}
    assert ext["e2ee"]["device_lists"] == {"changed": [], "left": []}
    assert len(queries) <= MAX_STATEMENTS_PER_QUIET_WAKE, "\n".join(queries)


async def test_each_change_reaches_the_next_response(
    make_user: MakeUser, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await make_user("alice")
    bob_olm = await olm_user(server, http, "bob")
    bob = bob_olm.raw
    room = await alice.room_with(bob, name="probe")
    other = await alice.room_with(bob, name="other")
    await alice.send(room, "unread", "u1")
    conn = Connection(bob)
    first = await conn.next()
    assert first["rooms"][room]["notification_count"] == 1
    assert first["lists"]["dms"]["count"] == 0
    await conn.next()

    # A to-device message.
    bob_device = bob_olm.device_id
    await alice.ok(
        "PUT", "/sendToDevice/org.example.ping/p1", json={"messages": {bob.user_id: {bob_device: {"n": 1}}}}
    )
    out = await conn.next()
    assert [e["content"] for e in out["extensions"]["to_device"]["events"]] == [{"n": 1}]
    assert (await conn.next())["extensions"]["to_device"]["events"] == []

    # m.direct: the DM filter and the account data both follow.
    me = quote(bob.user_id)
    await bob.ok("PUT", f"/user/{me}/account_data/m.direct", json={alice.user_id: [other]})
    out = await conn.next()
    assert out["lists"]["dms"]["count"] == 1
    assert "m.direct" in {e["type"] for e in out["extensions"]["account_data"]["global"]}

    # Room account data.
    await bob.ok("PUT", f"/user/{me}/rooms/{quote(room)}/account_data/org.example.r", json={"r": 1})
    out = await conn.next()
    assert out["extensions"]["account_data"]["rooms"] == {
        room: [{"type": "org.example.r", "content": {"r": 1}}]
    }

    # A push rule.
    rule = "/pushrules/global/override/.m.rule.suppress_notices/enabled"
    await bob.ok("PUT", rule, json={"enabled": False})
    out = await conn.next()
    assert "m.push_rules" in {e["type"] for e in out["extensions"]["account_data"]["global"]}

    # One-time keys: uploaded, then one claimed.
    await bob_olm.upload_keys(one_time=3)
    e2ee = (await conn.next())["extensions"]["e2ee"]
    assert e2ee["device_one_time_keys_count"]["signed_curve25519"] == 3
    assert e2ee["device_unused_fallback_key_types"] == ["signed_curve25519"]
    await alice.ok(
        "POST", "/keys/claim", json={"one_time_keys": {bob.user_id: {bob_device: "signed_curve25519"}}}
    )
    counts = (await conn.next())["extensions"]["e2ee"]["device_one_time_keys_count"]
    assert counts["signed_curve25519"] == 2

    # Bob reads the room: its unread count drops, with no new event in it.
    latest = await alice.ok("GET", f"/rooms/{quote(room)}/messages", params={"dir": "b", "limit": "1"})
    read_up_to = latest["chunk"][0]["event_id"]
    await bob.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(read_up_to)}", json={})
    out = await conn.next()
    assert out["rooms"][room]["notification_count"] == 0
    assert bob.user_id in out["extensions"]["receipts"]["rooms"][room]["content"][read_up_to]["m.read"]
    # And Alice's receipt in the other room.
    sent = await bob.send(other, "for alice", "b1")
    await conn.next()
    await alice.ok("POST", f"/rooms/{quote(other)}/receipt/m.read/{quote(sent)}", json={})
    out = await conn.next()
    assert alice.user_id in out["extensions"]["receipts"]["rooms"][other]["content"][sent]["m.read"]


async def test_device_lists_follow_the_users_own_memberships(
    make_user: MakeUser, server: RunningServer, http: aiohttp.ClientSession
) -> None:
    """Sharing a room with someone new, or no longer sharing any: the lists change with no
    device key changing, from the user's own membership."""
    bob = await make_user("bob")
    carol_olm = await olm_user(server, http, "carol")
    await carol_olm.upload_keys(one_time=1)
    solo = await carol_olm.raw.create_room(preset="public_chat")
    conn = Connection(bob)
    await conn.next()
    await conn.next()
    assert (await bob.join(solo))[0] == 200
    assert (await conn.next())["extensions"]["e2ee"]["device_lists"]["changed"] == [carol_olm.raw.user_id]
    await conn.next()
    await bob.ok("POST", f"/rooms/{quote(solo)}/leave", json={})
    lists = (await conn.next())["extensions"]["e2ee"]["device_lists"]
    assert lists == {"changed": [], "left": [carol_olm.raw.user_id]}
