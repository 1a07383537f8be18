"""Delivery to push gateways: a local aiohttp gateway receives /_matrix/push/v1/notify."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp

from homeserver.handlers.cs_services import CS_KEY
from homeserver.handlers.pusher_delivery import PusherDelivery
from tests.support.http import RawClient
from tests.support.push_gateway import Gateway, gateway
from tests.support.server import RunningServer, run_server

ALLOW_LOOPBACK = {"allowed_gateway_ranges": ["127.0.0.0/8", "::1/128"]}


@asynccontextmanager
async def setup(
    tmp_path: object, **push: Any
) -> AsyncIterator[tuple[RunningServer, Gateway, list[RawClient]]]:
    async with (
        gateway() as gw,
        run_server(str(tmp_path), push=push or ALLOW_LOOPBACK) as srv,
        aiohttp.ClientSession() as session,
    ):
        clients = []
        for name in ("alice", "bob", "carol"):
            login = await srv.login(name)
            clients.append(RawClient(session, srv.base_url, login["access_token"], login["user_id"]))
        yield srv, gw, clients


def delivery(srv: RunningServer) -> PusherDelivery:
    return srv.runner.app[CS_KEY].pusher_delivery


async def set_pusher(client: RawClient, gw: Gateway, pushkey: str, **data: Any) -> None:
    await client.ok(
        "POST",
        "/pushers/set",
        json={
            "kind": "http",
            "app_id": "org.example.app",
            "pushkey": pushkey,
            "app_display_name": "Example",
            "device_display_name": "Phone",
            "lang": "en",
            "data": {"url": gw.url, **data},
        },
    )


async def room(creator: RawClient, *others: RawClient, direct: bool = False, name: str | None = None) -> str:
    body: dict[str, Any] = {"invite": [o.user_id for o in others], "is_direct": direct}
    if name:
        body["name"] = name
    room_id = str((await creator.ok("POST", "/createRoom", json=body))["room_id"])
    for other in others:
        await other.ok("POST", f"/rooms/{quote(room_id)}/join", json={})
    return room_id


async def send(client: RawClient, room_id: str, content: dict[str, Any], txn: str) -> str:
    out = await client.ok("PUT", f"/rooms/{quote(room_id)}/send/m.room.message/{txn}", json=content)
    return str(out["event_id"])


async def test_dm_message_is_pushed_with_the_spec_body(tmp_path: object) -> None:
    async with setup(tmp_path) as (srv, gw, (alice, bob, _)):
        await alice.ok("PUT", f"/profile/{quote(alice.user_id)}/displayname", json={"displayname": "Alice"})
        room_id = await room(alice, bob, direct=True)
        await set_pusher(bob, gw, "bob-key", extra="kept")
        event_id = await send(alice, room_id, {"msgtype": "m.text", "body": "hi there"}, "t1")
        n = await gw.next()
        assert n["event_id"] == event_id
        assert n["room_id"] == room_id
        assert n["type"] == "m.room.message"
        assert n["sender"] == alice.user_id
        assert n["sender_display_name"] == "Alice"
        assert n["content"] == {"msgtype": "m.text", "body": "hi there"}
        # Bob's invite notified him too; it is still unread.
        assert n["counts"] == {"unread": 2}
        assert n["prio"] == "high"  # the one-to-one rule sets a sound
        (device,) = n["devices"]
        assert device["app_id"] == "org.example.app"
        assert device["pushkey"] == "bob-key"
        assert isinstance(device["pushkey_ts"], int) and device["pushkey_ts"] > 1_600_000_000
        assert device["data"] == {"extra": "kept"}
        assert device["tweaks"] == {"sound": "default", "highlight": False}

        # The sender is not notified of their own message; a second one raises the count.
        await send(alice, room_id, {"msgtype": "m.text", "body": "again"}, "t2")
        assert (await gw.next())["counts"] == {"unread": 3}
        await delivery(srv).idle()
        await gw.nothing(0.2)


async def test_mention_is_a_high_priority_highlight(tmp_path: object) -> None:
    async with setup(tmp_path) as (_srv, gw, (alice, bob, carol)):
        room_id = await room(alice, bob, carol, name="Planning")
        await set_pusher(bob, gw, "bob-key")
        await send(alice, room_id, {"msgtype": "m.text", "body": "chatter"}, "t1")
        plain = await gw.next()
        assert plain["prio"] == "low" and plain["devices"][0]["tweaks"] == {}
        assert plain["room_name"] == "Planning"
        unread = plain["counts"]["unread"]
        event_id = await send(
            alice, room_id,
            {"msgtype": "m.text", "body": "bob: look", "m.mentions": {"user_ids": [bob.user_id]}}, "t2",
        )  # fmt: skip
        n = await gw.next()
        assert n["event_id"] == event_id
        assert n["prio"] == "high"
        assert n["devices"][0]["tweaks"]["highlight"] is True
        assert n["counts"] == {"unread": unread + 1}


async def test_rejected_pushkey_is_removed(tmp_path: object) -> None:
    async with setup(tmp_path) as (srv, gw, (alice, bob, _)):
        room_id = await room(alice, bob, direct=True)
        await set_pusher(bob, gw, "stale-key")
        gw.reject.add("stale-key")
        await send(alice, room_id, {"msgtype": "m.text", "body": "one"}, "t1")
        await gw.next()
        await delivery(srv).idle()
        assert (await bob.ok("GET", "/pushers"))["pushers"] == []
        await send(alice, room_id, {"msgtype": "m.text", "body": "two"}, "t2")
        await delivery(srv).idle()
        await gw.nothing(0.2)


async def test_a_devices_pushers_go_when_it_logs_out(tmp_path: object) -> None:
    async with setup(tmp_path) as (srv, gw, (alice, bob, _)):
        room_id = await room(alice, bob, direct=True)
        phone = RawClient(bob.session, srv.base_url, (await srv.login("bob"))["access_token"], bob.user_id)
        await set_pusher(phone, gw, "phone-key")
        await set_pusher(bob, gw, "laptop-key")
        assert {p["pushkey"] for p in (await bob.ok("GET", "/pushers"))["pushers"]} == {
            "phone-key",
            "laptop-key",
        }
        await phone.ok("POST", "/logout", json={})
        assert [p["pushkey"] for p in (await bob.ok("GET", "/pushers"))["pushers"]] == ["laptop-key"]
        await send(alice, room_id, {"msgtype": "m.text", "body": "after logout"}, "t1")
        notification = await gw.next()
        assert [d["pushkey"] for d in notification["devices"]] == ["laptop-key"]
        await delivery(srv).idle()
        await gw.nothing(0.2)


async def test_event_id_only_has_no_content(tmp_path: object) -> None:
    async with setup(tmp_path) as (_srv, gw, (alice, bob, _)):
        room_id = await room(alice, bob, direct=True)
        await set_pusher(bob, gw, "bob-key", format="event_id_only")
        event_id = await send(alice, room_id, {"msgtype": "m.text", "body": "secret"}, "t1")
        n = await gw.next()
        assert n["event_id"] == event_id and n["room_id"] == room_id
        assert n["counts"]["unread"] >= 1
        assert n["devices"][0]["data"] == {"format": "event_id_only"}
        for key in ("content", "sender", "sender_display_name", "type", "room_name"):
            assert key not in n


async def test_failures_are_retried_with_backoff(tmp_path: object) -> None:
    async with setup(tmp_path) as (srv, gw, (alice, bob, _)):
        delivery(srv).retry_min_s = 0.05
        room_id = await room(alice, bob, direct=True)
        await set_pusher(bob, gw, "bob-key")
        gw.failures = [500, 503, 429]
        event_id = await send(alice, room_id, {"msgtype": "m.text", "body": "eventually"}, "t1")
        assert (await gw.next())["event_id"] == event_id
        assert gw.attempts == 4


async def test_loopback_gateway_refused_unless_allowed(tmp_path: object) -> None:
    async with setup(tmp_path, allowed_gateway_ranges=[]) as (srv, gw, (alice, bob, _)):
        room_id = await room(alice, bob, direct=True)
        await set_pusher(bob, gw, "bob-key")
        await send(alice, room_id, {"msgtype": "m.text", "body": "hi"}, "t1")
        await delivery(srv).idle()
        await gw.nothing(0.2)
        assert gw.attempts == 0
