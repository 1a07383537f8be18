"""Application services: a bridge built on mautrix's AppService against the real server
(registration, masquerading, transactions, user queries, ping), and the namespace rules
and transaction delivery checked over raw HTTP."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from mautrix.appservice import AppService
from mautrix.types import Event, MessageEvent, RoomID, UserID
from sqlalchemy import select

from homeserver.appservice import sender as sender_module
from homeserver.appservice.sender import AppServiceSender
from homeserver.storage.cs_schema import appservice_state
from tests.support.appservice import AS_TOKEN, HS_TOKEN, Receiver, write_registration
from tests.support.http import RawClient
from tests.support.server import RunningServer, free_port, lasting_database, run_server


@asynccontextmanager
async def bridged_server(
    tmp_path: str, as_port: int, registration_extra: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[RunningServer]:
    registration = write_registration(tmp_path, as_port, **(registration_extra or {}))
    async with run_server(tmp_path, app_services=[registration], **overrides) as srv:
        yield srv


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 15.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    assert await check(), what


def mautrix_service(srv: RunningServer, **options: Any) -> AppService:
    """mautrix-python's AppService for the test registration (write_registration)."""
    return AppService(
        server=srv.base_url,
        domain=srv.server_name,
        as_token=AS_TOKEN,
        hs_token=HS_TOKEN,
        bot_localpart="_bridge_bot",
        id="test-bridge",
        **options,
    )


def the_sender(srv: RunningServer) -> AppServiceSender:
    return next(s for s in srv.hs.background if isinstance(s, AppServiceSender))


async def test_a_mautrix_bridge_relays_both_ways(tmp_path: Any, http: aiohttp.ClientSession) -> None:
    as_port = free_port()
    async with bridged_server(str(tmp_path), as_port) as srv:
        seen: list[Event] = []
        appservice = mautrix_service(srv)

        async def query_user(user_id: UserID) -> dict[str, Any]:
            # The bridge makes its puppets on demand, as real bridges do.
            await appservice.intent.user(user_id).ensure_registered()
            return {"registered": True}  # mautrix answers 404 for an empty answer

        async def on_event(evt: Event) -> None:
            seen.append(evt)

        appservice.query_user = query_user  # type: ignore[assignment]  # mautrix's alias is loose
        appservice.matrix_event_handler(on_event)
        await appservice.start("127.0.0.1", as_port)
        try:
            assert await appservice.ping_self("hello") >= 0
            alice_id = await srv.register("alice")
            token, _ = await srv.hs.auth.create_session(alice_id, None, None)
            alice = RawClient(http, srv.base_url, token, alice_id)
            room = await alice.create_room(preset="private_chat")
            # An invite to an unknown user of the namespace asks the bridge, which registers it.
            puppet = UserID(f"@_bridge_carol:{srv.server_name}")
            assert not await srv.hs.accounts.user_exists(puppet)
            await alice.ok("POST", f"/rooms/{quote(room)}/invite", json={"user_id": puppet})
            assert await srv.hs.accounts.user_exists(puppet)
            carol = appservice.intent.user(puppet)
            await carol.join_room(RoomID(room))
            await alice.send(room, "hello bridge", "t1")

            def bodies() -> list[str]:
                return [
                    str(e.content.body) for e in seen if isinstance(e, MessageEvent) and e.room_id == room
                ]

            async def relayed() -> bool:
                return "hello bridge" in bodies()

            await eventually(relayed, "the bridge got alice's message")
            invites = [e for e in seen if getattr(e, "state_key", None) == puppet]
            assert invites, "the bridge saw its puppet's invite"
            # The puppet speaks through the service's token: alice sees it as carol.
            event_id = await carol.send_text(RoomID(room), "hello from the other side")
            sync = await alice.sync()
            timeline = sync["rooms"]["join"][room]["timeline"]["events"]
            mine = [e for e in timeline if e["event_id"] == event_id]
            assert mine and mine[0]["sender"] == puppet
            assert mine[0]["content"]["body"] == "hello from the other side"
        finally:
            await appservice.stop()


async def test_namespaces_are_the_services_alone(tmp_path: Any, http: aiohttp.ClientSession) -> None:
    async with bridged_server(str(tmp_path), free_port()) as srv:
        anyone = RawClient(http, srv.base_url)
        service = RawClient(http, srv.base_url, AS_TOKEN)
        name = srv.server_name
        # The bot exists from start-up on (it can be invited before the service calls).
        assert await srv.hs.accounts.user_exists(f"@_bridge_bot:{name}")
        # People cannot register in an exclusive namespace...
        status, body = await anyone.request(
            "POST", "/register", json={"username": "_bridge_mallory", "password": "a long password 1"}
        )
        assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
        # ...the service can, without a password or UIA, and not outside it.
        register = {"type": "m.login.application_service", "inhibit_login": True}
        body = await service.ok("POST", "/register", json={**register, "username": "_bridge_dave"})
        assert body["user_id"] == f"@_bridge_dave:{name}" and "access_token" not in body
        status, body = await service.request("POST", "/register", json={**register, "username": "dave"})
        assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
        status, body = await service.request(
            "POST", "/register", json={**register, "username": "_bridge_dave"}
        )
        assert (status, body["errcode"]) == (400, "M_USER_IN_USE")
        status, body = await anyone.request("POST", "/register", json={**register, "username": "_bridge_eve"})
        assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
        wrong = RawClient(http, srv.base_url, "not-the-token")
        status, body = await wrong.request("POST", "/register", json={**register, "username": "_bridge_eve"})
        assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        # Acting as users: the bot by default, a namespace user with user_id=, nobody else.
        me = await service.ok("GET", "/account/whoami")
        assert me["user_id"] == f"@_bridge_bot:{name}" and "device_id" not in me
        dave = f"@_bridge_dave:{name}"
        assert (await service.ok("GET", "/account/whoami", params={"user_id": dave}))["user_id"] == dave
        alice_id = await srv.register("alice")
        status, body = await service.request("GET", "/account/whoami", params={"user_id": alice_id})
        assert (status, body["errcode"]) == (403, "M_EXCLUSIVE")
        ghost = f"@_bridge_ghost:{name}"
        status, body = await service.request("GET", "/account/whoami", params={"user_id": ghost})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        params = {"user_id": dave, "device_id": "NOSUCHDEVICE"}
        status, body = await service.request("GET", "/account/whoami", params=params)
        assert (status, body["errcode"]) == (400, "M_UNKNOWN_DEVICE")
        # Logging in as a namespace user gives it a device (for encryption, say).
        login = {"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": dave}}
        session = await service.ok("POST", "/login", json=login)
        assert session["user_id"] == dave and session["access_token"]
        params = {"user_id": dave, "device_id": session["device_id"]}
        assert (await service.ok("GET", "/account/whoami", params=params))["device_id"] == session[
            "device_id"
        ]
        login["identifier"] = {"type": "m.id.user", "user": alice_id}
        status, body = await service.request("POST", "/login", json=login)
        assert (status, body["errcode"]) == (403, "M_EXCLUSIVE")
        flows = [f["type"] for f in (await anyone.ok("GET", "/login"))["flows"]]
        assert "m.login.application_service" in flows
        # Aliases in the exclusive namespace are the service's too.
        token, _ = await srv.hs.auth.create_session(alice_id, None, None)
        alice = RawClient(http, srv.base_url, token, alice_id)
        room = await alice.create_room()
        alias = quote(f"#_bridge_room:{name}")
        status, body = await alice.request("PUT", f"/directory/room/{alias}", json={"room_id": room})
        assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
        status, body = await alice.request("POST", "/createRoom", json={"room_alias_name": "_bridge_x"})
        assert (status, body["errcode"]) == (400, "M_EXCLUSIVE")
        await service.ok("PUT", f"/directory/room/{alias}", json={"room_id": room})
        # No URL answers: a ping says so in the spec's words.
        status, body = await service.request(
            "POST", "/_matrix/client/v1/appservice/test-bridge/ping", json={}
        )
        assert (status, body["errcode"]) == (502, "M_CONNECTION_FAILED")
        status, body = await service.request("POST", "/_matrix/client/v1/appservice/other/ping", json={})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_transactions_wait_for_the_service_and_are_never_replayed(
    tmp_path: Any, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_module, "RETRY_MIN_S", 0.1)
    monkeypatch.setattr(sender_module, "RETRY_MAX_S", 0.4)
    as_port = free_port()
    receiver = Receiver(fail_first=2)
    async with lasting_database() as db:
        async with bridged_server(str(tmp_path), as_port, **db) as srv:
            service = RawClient(http, srv.base_url, AS_TOKEN)
            alice_id = await srv.register("alice")
            bob_id = await srv.register("bob")
            token, _ = await srv.hs.auth.create_session(alice_id, None, None)
            alice = RawClient(http, srv.base_url, token, alice_id)
            # A room with a namespace user in it, and one without: only the first is sent.
            bridged = await alice.create_room(preset="public_chat")
            other = await alice.create_room(preset="public_chat", invite=[bob_id])
            await service.ok("POST", f"/join/{quote(bridged)}")
            for i in range(3):
                await alice.send(bridged, f"m{i}", f"a{i}")
                await alice.send(other, f"private {i}", f"b{i}")
            sender = the_sender(srv)

            async def failing() -> bool:
                return sender.failed_attempts >= 1

            # Nobody listens yet: the first transaction fails and is retried.
            await eventually(failing, "the sender retried an unreachable service")
            async with receiver.running(as_port):

                async def delivered() -> bool:
                    return receiver.bodies(bridged) == ["m0", "m1", "m2"]

                await eventually(delivered, "every message reached the service, in order")
                assert receiver.bodies(other) == []
                # Two answers were 500: the same transaction came back each time.
                assert receiver.attempts[:3] == [receiver.attempts[0]] * 3
                assert receiver.tokens == {f"Bearer {HS_TOKEN}"}
                async with http.get(srv.base_url + "/metrics") as resp:
                    metrics = await resp.text()
                failed = re.search(r"^sotto_appservice_failed_attempts_total (\S+)$", metrics, re.M)
                assert failed is not None and float(failed.group(1)) >= 3  # unreachable, then two 500s
                first_txns = [t for t, _ in receiver.transactions]
                name = srv.server_name
        # Restarted on the same database: only what is new is sent, under new IDs.
        again = bridged_server(str(tmp_path), as_port, server_name=name, **db)
        async with again as srv, receiver.running(as_port):
            token, _ = await srv.hs.auth.create_session(alice_id, None, None)
            alice = RawClient(http, srv.base_url, token, alice_id)
            await alice.send(bridged, "after restart", "a9")

            async def resumed() -> bool:
                return receiver.bodies(bridged)[-1:] == ["after restart"]

            await eventually(resumed, "the restarted server sent the new message")
            assert receiver.bodies(bridged) == ["m0", "m1", "m2", "after restart"]
            later = [t for t, _ in receiver.transactions][len(first_txns) :]
            assert min(int(t) for t in later) > max(int(t) for t in first_txns)


async def test_a_transaction_in_flight_is_resent_unchanged_after_a_restart(
    tmp_path: Any, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_module, "RETRY_MIN_S", 0.1)
    monkeypatch.setattr(sender_module, "RETRY_MAX_S", 0.2)
    as_port = free_port()
    async with lasting_database() as db:
        async with bridged_server(str(tmp_path), as_port, **db) as srv:
            service = RawClient(http, srv.base_url, AS_TOKEN)
            room = await service.create_room(preset="public_chat")
            sender = the_sender(srv)

            async def failing() -> bool:
                return sender.failed_attempts >= 2

            await eventually(failing, "the service is unreachable")
            for i in range(3):
                await service.send(room, f"queued {i}", f"q{i}")
            async with srv.hs.db.read() as conn:
                row = (await conn.execute(select(appservice_state.c.pending_json))).one()
            pending = json.loads(row[0])
            name = srv.server_name
        receiver = Receiver()
        async with bridged_server(str(tmp_path), as_port, server_name=name, **db) as srv:
            async with receiver.running(as_port):

                async def caught_up() -> bool:
                    return receiver.bodies(room) == ["queued 0", "queued 1", "queued 2"]

                await eventually(caught_up, "the restarted server sent everything")
    # The first transaction is the one in flight before the restart, as it was; the
    # messages sent while it failed come after it, under the next ID.
    txn, events = receiver.transactions[0]
    assert int(txn) == pending["txn_id"]
    assert [e["event_id"] for e in events] == pending["event_ids"]
    assert all(int(t) > pending["txn_id"] for t, _ in receiver.transactions[1:])


async def test_a_service_sets_its_events_timestamps(tmp_path: Any, http: aiohttp.ClientSession) -> None:
    async with bridged_server(str(tmp_path), free_port()) as srv:
        service = RawClient(http, srv.base_url, AS_TOKEN)
        room = await service.create_room(preset="public_chat")
        then = 1_500_000_000_000
        message = {"msgtype": "m.text", "body": "sent long ago"}
        sent = await service.ok("PUT", f"/rooms/{quote(room)}/send/m.room.message/t1?ts={then}", json=message)
        topic = await service.ok(
            "PUT", f"/rooms/{quote(room)}/state/m.room.topic/?ts={then + 1}", json={"topic": "old"}
        )
        for event_id, ts in ((sent["event_id"], then), (topic["event_id"], then + 1)):
            event = await service.ok("GET", f"/rooms/{quote(room)}/event/{quote(event_id)}")
            assert event["origin_server_ts"] == ts
        status, body = await service.request(
            "PUT", f"/rooms/{quote(room)}/send/m.room.message/t2?ts=yesterday", json=message
        )
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        # People cannot: the parameter is ignored for them.
        alice_id = await srv.register("alice")
        token, _ = await srv.hs.auth.create_session(alice_id, None, None)
        alice = RawClient(http, srv.base_url, token, alice_id)
        assert (await alice.join(room))[0] == 200
        mine = await alice.ok("PUT", f"/rooms/{quote(room)}/send/m.room.message/a1?ts={then}", json=message)
        event = await alice.ok("GET", f"/rooms/{quote(room)}/event/{quote(mine['event_id'])}")
        assert event["origin_server_ts"] > then + 10**9


async def test_typing_and_receipts_reach_a_service_that_asks(
    tmp_path: Any, http: aiohttp.ClientSession
) -> None:
    as_port = free_port()
    receiver = Receiver()
    ephemeral = {"receive_ephemeral": True}
    async with bridged_server(str(tmp_path), as_port, ephemeral) as srv, receiver.running(as_port):
        service = RawClient(http, srv.base_url, AS_TOKEN)
        alice_id = await srv.register("alice")
        token, _ = await srv.hs.auth.create_session(alice_id, None, None)
        alice = RawClient(http, srv.base_url, token, alice_id)
        room = await alice.create_room(preset="public_chat")
        elsewhere = await alice.create_room(preset="public_chat")
        await service.ok("POST", f"/join/{quote(room)}")
        first = await alice.send(room, "read me", "a1")
        await alice.ok(
            "PUT", f"/rooms/{quote(room)}/typing/{quote(alice_id)}", json={"typing": True, "timeout": 30000}
        )
        await alice.ok(
            "PUT",
            f"/rooms/{quote(elsewhere)}/typing/{quote(alice_id)}",
            json={"typing": True, "timeout": 30000},
        )
        await alice.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(first)}", json={})
        await alice.ok("POST", f"/rooms/{quote(room)}/receipt/m.read.private/{quote(first)}", json={})
        await service.ok("POST", f"/rooms/{quote(room)}/receipt/m.read.private/{quote(first)}", json={})
        # Presence: of a member of the bridged room, not of a stranger.
        await alice.ok(
            "PUT", f"/presence/{quote(alice_id)}/status", json={"presence": "online", "status_msg": "hi"}
        )
        bob_id = await srv.register("bob")
        bob_token, _ = await srv.hs.auth.create_session(bob_id, None, None)
        bob = RawClient(http, srv.base_url, bob_token, bob_id)
        assert (await bob.join(elsewhere))[0] == 200  # a room the service is not in
        await bob.ok("PUT", f"/presence/{quote(bob_id)}/status", json={"presence": "online"})

        def receipts() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for edu in receiver.ephemeral:
                if edu["type"] == "m.receipt" and edu["room_id"] == room:
                    for kinds in edu["content"].get(first, {}).items():
                        out.setdefault(kinds[0], {}).update(kinds[1])
            return out

        def presence() -> list[dict[str, Any]]:
            return [e for e in receiver.ephemeral if e["type"] == "m.presence"]

        async def arrived() -> bool:
            return "m.read.private" in receipts() and "m.read" in receipts() and bool(presence())

        await eventually(arrived, "the receipts reached the service")
        typing = [e for e in receiver.ephemeral if e["type"] == "m.typing"]
        assert {"type": "m.typing", "room_id": room, "content": {"user_ids": [alice_id]}} in typing
        # Everything written before this message has been through the sender once it arrives.
        await alice.send(room, "marker", "a9")

        async def marked() -> bool:
            return receiver.bodies(room)[-1:] == ["marker"]

        await eventually(marked, "the marker arrived")
        # Alice's (and the bot's own, active through its requests), never the stranger's.
        senders = {p["sender"]: p["content"] for p in presence()}
        assert alice_id in senders and bob_id not in senders
        assert senders[alice_id]["presence"] == "online" and senders[alice_id]["status_msg"] == "hi"
        # Only rooms the service is interested in, and only its own users' private receipts.
        assert all(e["room_id"] == room for e in receiver.ephemeral if e["type"] != "m.presence")
        assert set(receipts()["m.read"]) == {alice_id}
        assert set(receipts()["m.read.private"]) == {f"@_bridge_bot:{srv.server_name}"}


async def test_a_service_that_does_not_ask_gets_no_ephemeral_data(
    tmp_path: Any, http: aiohttp.ClientSession
) -> None:
    as_port = free_port()
    receiver = Receiver()
    async with bridged_server(str(tmp_path), as_port) as srv, receiver.running(as_port):
        service = RawClient(http, srv.base_url, AS_TOKEN)
        room = await service.create_room(preset="public_chat")
        first = await service.send(room, "hello", "s1")
        await service.ok("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(first)}", json={})
        await service.send(room, "after the receipt", "s2")

        async def arrived() -> bool:
            return receiver.bodies(room)[-1:] == ["after the receipt"]

        await eventually(arrived, "the messages reached the service")
        assert receiver.ephemeral == []


async def test_third_party_lookups_are_asked_of_the_bridge(
    tmp_path: Any, http: aiohttp.ClientSession
) -> None:
    as_port = free_port()
    asked: list[tuple[str, dict[str, str]]] = []
    freenode = {"network_id": "freenode", "desc": "Freenode", "fields": {}}
    irc = {
        "user_fields": ["nick"],
        "location_fields": ["channel"],
        "icon": "",
        "field_types": {},
        "instances": [freenode],
    }

    async def answer(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {HS_TOKEN}"
        asked.append((request.path, dict(request.query)))
        if request.path == "/_matrix/app/v1/thirdparty/protocol/irc":
            return web.json_response(irc)
        if request.path.startswith("/_matrix/app/v1/thirdparty/location"):
            return web.json_response([{"alias": "#_bridge_x:example.org", "protocol": "irc", "fields": {}}])
        return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)

    bridge = web.Application()
    bridge.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(bridge)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", as_port).start()
    try:
        async with bridged_server(str(tmp_path), as_port, {"protocols": ["irc"]}) as srv:
            alice_id = await srv.register("alice")
            token, _ = await srv.hs.auth.create_session(alice_id, None, None)
            alice = RawClient(http, srv.base_url, token, alice_id)
            # The homeserver names each instance: "<service>|<network>".
            expected = {**irc, "instances": [{**freenode, "instance_id": "test-bridge|freenode"}]}
            assert await alice.ok("GET", "/thirdparty/protocols") == {"irc": expected}
            assert await alice.ok("GET", "/thirdparty/protocol/irc") == expected
            status, _ = await alice.request("GET", "/thirdparty/protocol/xmpp")
            assert status == 404
            found = await alice.ok("GET", "/thirdparty/location/irc", params={"channel": "#x"})
            assert [f["alias"] for f in found] == ["#_bridge_x:example.org"]
            assert ("/_matrix/app/v1/thirdparty/location/irc", {"channel": "#x"}) in asked
            # The bridge answered 404 for users: nothing found, not an error.
            assert await alice.ok("GET", "/thirdparty/user", params={"userid": "@x:example.org"}) == []
    finally:
        await runner.cleanup()


async def test_a_service_manages_its_users_devices_without_uia(
    tmp_path: Any, http: aiohttp.ClientSession
) -> None:
    async with bridged_server(str(tmp_path), free_port()) as srv:
        service = RawClient(http, srv.base_url, AS_TOKEN)
        register = {"type": "m.login.application_service", "inhibit_login": True, "username": "_bridge_dev"}
        dave = (await service.ok("POST", "/register", json=register))["user_id"]
        as_dave = {"user_id": dave}
        status, _ = await service.request("PUT", "/devices/BRIDGEDEV?user_id=" + quote(dave), json={})
        assert status == 201  # created (the spec: only application services may)
        status, _ = await service.request(
            "PUT", "/devices/BRIDGEDEV?user_id=" + quote(dave), json={"display_name": "bridge"}
        )
        assert status == 200  # updated
        listed = (await service.ok("GET", "/devices", params=as_dave))["devices"]
        assert [(d["device_id"], d.get("display_name")) for d in listed] == [("BRIDGEDEV", "bridge")]
        params = {"user_id": dave, "device_id": "BRIDGEDEV"}
        assert (await service.ok("GET", "/account/whoami", params=params))["device_id"] == "BRIDGEDEV"
        await service.ok("DELETE", "/devices/BRIDGEDEV?user_id=" + quote(dave), json={})
        assert (await service.ok("GET", "/devices", params=as_dave))["devices"] == []
        status, body = await service.request("GET", "/account/whoami", params=params)
        assert (status, body["errcode"]) == (400, "M_UNKNOWN_DEVICE")  # gone, not cached
        # People still cannot create devices, and deleting one needs their password.
        alice_id = await srv.register("alice")
        token, device = await srv.hs.auth.create_session(alice_id, None, None)
        alice = RawClient(http, srv.base_url, token, alice_id)
        status, _ = await alice.request("PUT", "/devices/NEWDEVICE", json={})
        assert status == 404
        status, body = await alice.request("DELETE", f"/devices/{device}", json={})
        assert status == 401 and "flows" in body


async def test_a_service_publishes_rooms_in_its_networks_directory(
    tmp_path: Any, http: aiohttp.ClientSession
) -> None:
    async with bridged_server(str(tmp_path), free_port()) as srv:
        service = RawClient(http, srv.base_url, AS_TOKEN)
        alice_id = await srv.register("alice")
        token, _ = await srv.hs.auth.create_session(alice_id, None, None)
        alice = RawClient(http, srv.base_url, token, alice_id)
        bridged = await service.create_room(preset="public_chat", name="#freenode-chat")
        await alice.create_room(preset="public_chat", name="Matrix lobby", visibility="public")
        path = f"/directory/list/appservice/freenode/{quote(bridged)}"
        await service.ok("PUT", path, json={"visibility": "public"})
        status, body = await alice.request("PUT", path, json={"visibility": "public"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")

        async def listed(**body: Any) -> set[str]:
            return {r.get("name") for r in (await alice.ok("POST", "/publicRooms", json=body))["chunk"]}

        assert await listed() == {"Matrix lobby"}
        assert await listed(third_party_instance_id="test-bridge|freenode") == {"#freenode-chat"}
        assert await listed(third_party_instance_id="test-bridge|other") == set()
        assert await listed(include_all_networks=True) == {"Matrix lobby", "#freenode-chat"}
        await service.ok("PUT", path, json={"visibility": "private"})
        assert await listed(include_all_networks=True) == {"Matrix lobby"}


async def test_a_service_hears_when_a_typers_timeout_ends(tmp_path: Any, http: aiohttp.ClientSession) -> None:
    as_port = free_port()
    receiver = Receiver()
    async with (
        bridged_server(str(tmp_path), as_port, {"receive_ephemeral": True}) as srv,
        receiver.running(as_port),
    ):
        service = RawClient(http, srv.base_url, AS_TOKEN)
        room = await service.create_room(preset="public_chat")
        alice_id = await srv.register("alice")
        token, _ = await srv.hs.auth.create_session(alice_id, None, None)
        alice = RawClient(http, srv.base_url, token, alice_id)
        assert (await alice.join(room))[0] == 200
        typing = {"typing": True, "timeout": 300}
        await alice.ok("PUT", f"/rooms/{quote(room)}/typing/{quote(alice_id)}", json=typing)

        def typers() -> list[list[str]]:
            return [e["content"]["user_ids"] for e in receiver.ephemeral if e["type"] == "m.typing"]

        async def stopped() -> bool:
            return typers()[-1:] == [[]]

        # No request says so: the service is told when the 300 ms run out.
        await eventually(stopped, "the end of the typing reached the service")
        assert [alice_id] in typers()
