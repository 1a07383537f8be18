"""Account data, global and per room, over real HTTP (raw requests and mautrix)."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import aiohttp
import pytest
from mautrix.api import HTTPAPI
from mautrix.client import ClientAPI
from mautrix.errors import MNotFound
from mautrix.types import JSON, RoomID, UserID

from tests.support.http import RawClient
from tests.support.server import RunningServer


async def user(http: aiohttp.ClientSession, server: RunningServer, localpart: str) -> RawClient:
    body = await server.login(localpart)
    return RawClient(http, server.base_url, body["access_token"], body["user_id"])


async def test_global_account_data(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await user(http, server, "alice")
    path = f"/user/{quote(alice.user_id)}/account_data/org.example.settings"
    status, body = await alice.request("GET", path)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    assert await alice.ok("PUT", path, json={"theme": "dark"}) == {}
    assert await alice.ok("GET", path) == {"theme": "dark"}
    assert await alice.ok("PUT", path, json={"theme": "light"}) == {}
    assert await alice.ok("GET", path) == {"theme": "light"}


async def test_room_account_data(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await user(http, server, "alice")
    room_id = await alice.create_room()
    path = f"/user/{quote(alice.user_id)}/rooms/{quote(room_id)}/account_data/m.tag"
    status, _ = await alice.request("GET", path)
    assert status == 404
    assert await alice.ok("PUT", path, json={"tags": {"u.work": {"order": 0.5}}}) == {}
    assert await alice.ok("GET", path) == {"tags": {"u.work": {"order": 0.5}}}
    # Room and global data of the same type are separate.
    status, _ = await alice.request("GET", f"/user/{quote(alice.user_id)}/account_data/m.tag")
    assert status == 404
    status, body = await alice.request(
        "PUT", f"/user/{quote(alice.user_id)}/rooms/not-a-room/account_data/m.tag", json={}
    )
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = await alice.request(
        "GET", f"/user/{quote(alice.user_id)}/rooms/not-a-room/account_data/m.tag"
    )
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


async def test_account_data_errors(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await user(http, server, "alice")
    bob = await user(http, server, "bob")
    base = f"/user/{quote(alice.user_id)}"
    status, body = await bob.request("PUT", base + "/account_data/x.y", json={})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await bob.request("GET", base + "/account_data/x.y")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    for type_ in ("m.fully_read", "m.push_rules"):
        status, body = await alice.request("PUT", base + f"/account_data/{type_}", json={"event_id": "$x"})
        assert (status, body["errcode"]) == (405, "M_BAD_JSON"), type_
        status, body = await alice.request("PUT", base + f"/rooms/!r:x/account_data/{type_}", json={})
        assert (status, body["errcode"]) == (405, "M_BAD_JSON"), type_
    status, body = await alice.request("PUT", base + "/account_data/x.y", json=[1, 2])
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, body = await alice.request("PUT", base + "/account_data/x.y", data=b"{nope")
    assert (status, body["errcode"]) == (400, "M_NOT_JSON")


async def test_account_data_wakes_sync(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await user(http, server, "alice")
    first = await alice.sync()
    waiting = asyncio.create_task(alice.sync(since=first["next_batch"], timeout=10_000))
    await asyncio.sleep(0.2)
    await alice.ok("PUT", f"/user/{quote(alice.user_id)}/account_data/org.example.wake", json={"a": 1})
    result = await asyncio.wait_for(waiting, 5)
    events = result.get("account_data", {}).get("events", [])
    assert {"type": "org.example.wake", "content": {"a": 1}} in events


async def test_mautrix_account_data(server: RunningServer) -> None:
    await server.register("mau", "pw")
    async with aiohttp.ClientSession() as session:
        client = ClientAPI(api=HTTPAPI(server.base_url, client_session=session))
        resp = await client.login(identifier=UserID("mau"), password="pw")
        client.mxid = resp.user_id
        settings = {"k": JSON("v")}
        await client.set_account_data("org.example.mautrix", settings)
        assert await client.get_account_data("org.example.mautrix") == {"k": "v"}
        room_id = await client.create_room()
        tagged = {"r": JSON(1)}
        await client.set_account_data("org.example.room", tagged, room_id=room_id)
        assert await client.get_account_data("org.example.room", room_id=room_id) == {"r": 1}
        with pytest.raises(MNotFound):
            await client.get_account_data("org.example.absent", room_id=RoomID(room_id))


async def test_full_state_and_newly_joined_rooms_bring_it_all(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    """An incremental sync with full_state has all the account data, as an initial sync
    does; a room joined since gets all of its own (tags set before the join included)."""
    alice = await user(http, server, "alice")
    bob = await user(http, server, "bob")
    room_id = await alice.create_room()
    me = quote(alice.user_id)
    await alice.ok("PUT", f"/user/{me}/account_data/org.example.settings", json={"a": 1})
    await alice.ok("PUT", f"/user/{me}/rooms/{quote(room_id)}/account_data/m.tag", json={"tags": {"u.x": {}}})
    since = (await alice.sync())["next_batch"]
    assert (await alice.sync(since))["account_data"]["events"] == []
    whole = await alice.sync(since, full_state="true")
    assert {e["type"] for e in whole["account_data"]["events"]} >= {"org.example.settings"}
    tags = whole["rooms"]["join"][room_id]["account_data"]["events"]
    assert tags == [{"type": "m.tag", "content": {"tags": {"u.x": {}}}}]

    # Bob tags a room while invited; his next sync after joining carries the tag.
    other = await alice.create_room(invite=[bob.user_id])
    await bob.ok(
        "PUT",
        f"/user/{quote(bob.user_id)}/rooms/{quote(other)}/account_data/m.tag",
        json={"tags": {"u.y": {}}},
    )
    since = (await bob.sync())["next_batch"]
    assert (await bob.join(other))[0] == 200
    joined = (await bob.sync(since))["rooms"]["join"][other]
    assert joined["account_data"]["events"] == [{"type": "m.tag", "content": {"tags": {"u.y": {}}}}]
