"""A bridge that encrypts as its own users (registration `org.matrix.msc3202: true`): with
mautrix-python's AppService (`encryption_events=True`), its users' to-device messages,
their devices' key counts and the device list changes of the people it shares rooms with
arrive in its transactions (MSC2409, MSC3202), and delivered messages leave the inbox."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
from mautrix.types import ASToDeviceEvent, DeviceLists

from homeserver.appservice import encryption as encryption_module
from homeserver.appservice.encryption import TO_DEVICE
from homeserver.storage.to_device import ToDeviceStore
from tests.integration.e2ee.fixtures import olm_user
from tests.integration.test_appservice import bridged_server, eventually, mautrix_service
from tests.support.appservice import AS_TOKEN, Receiver
from tests.support.http import RawClient
from tests.support.server import free_port

ENCRYPTING = {"org.matrix.msc3202": True, "de.sorunome.msc2409.push_ephemeral": True}
DEVICE = "BRIDGEDEVICE"


async def test_an_encrypting_bridge_gets_its_devices_data(tmp_path: Any, http: aiohttp.ClientSession) -> None:
    as_port = free_port()
    async with bridged_server(str(tmp_path), as_port, ENCRYPTING) as srv:
        bot = f"@_bridge_bot:{srv.server_name}"
        to_device: list[ASToDeviceEvent] = []
        device_lists: list[DeviceLists] = []
        counts: list[dict[str, Any]] = []
        appservice = mautrix_service(srv, encryption_events=True, ephemeral_events=True)

        async def on_to_device(evt: ASToDeviceEvent) -> None:
            to_device.append(evt)

        async def on_device_lists(lists: DeviceLists) -> None:
            device_lists.append(lists)

        async def on_counts(found: dict[str, Any]) -> None:
            counts.append(found)

        appservice.to_device_handler = on_to_device
        appservice.device_list_handler = on_device_lists
        appservice.otk_handler = on_counts  # type: ignore[assignment]
        await appservice.start("127.0.0.1", as_port)
        try:
            as_bot = RawClient(http, srv.base_url, AS_TOKEN, bot)
            as_bot_params = {"user_id": bot}
            status, _ = await as_bot.request(
                "PUT", f"/devices/{DEVICE}", json={"display_name": "bridge"}, params=as_bot_params
            )
            assert status in (200, 201)
            keys = {f"signed_curve25519:K{i}": {"key": f"k{i}", "signatures": {}} for i in range(5)}
            await as_bot.request(
                "POST",
                "/keys/upload",
                json={"one_time_keys": keys},
                params={**as_bot_params, "device_id": DEVICE},
            )
            alice = await olm_user(srv, http, "alice")
            room = await alice.raw.create_room(preset="private_chat", invite=[bot])
            assert (await as_bot.request("POST", f"/join/{quote(room)}", json={}, params=as_bot_params))[
                0
            ] == 200

            # Alice claims one of the bridge device's keys and sends it a to-device message.
            claimed = await alice.raw.ok(
                "POST", "/keys/claim", json={"one_time_keys": {bot: {DEVICE: "signed_curve25519"}}}
            )
            assert claimed["one_time_keys"][bot][DEVICE]
            bob = await olm_user(srv, http, "bob")
            # One for the bridge's device, one for someone else's (not the bridge's business).
            messages = {bot: {DEVICE: {"n": 1}}, bob.user_id: {bob.device_id: {"n": 2}}}
            await alice.raw.ok("PUT", "/sendToDevice/org.example.hello/t1", json={"messages": messages})

            async def got_message() -> bool:
                return bool(to_device)

            await eventually(got_message, "the bridge got the to-device message")
            (evt,) = to_device
            assert (evt.to_user_id, evt.to_device_id, evt.sender) == (bot, DEVICE, alice.user_id)
            assert evt.type.t == "org.example.hello" and evt.content.serialize() == {"n": 1}
            # With it, the device's key count: one of five was claimed.
            assert counts and counts[-1][bot][DEVICE].signed_curve25519 == 4
            # Taken by the bridge: no longer waiting in the device's inbox.
            assert await ToDeviceStore(srv.hs.db).pending_count(bot, DEVICE) == 0

            # Alice, in a room with the bridge, gets new device keys: the bridge is told.
            await alice.upload_keys()

            async def got_change() -> bool:
                return any(alice.user_id in lists.changed for lists in device_lists)

            await eventually(got_change, "the bridge heard of alice's device list change")
            assert len(to_device) == 1
        finally:
            await appservice.stop()


async def test_a_bridge_that_does_not_encrypt_gets_none_of_it(
    tmp_path: Any, http: aiohttp.ClientSession
) -> None:
    as_port = free_port()
    receiver = Receiver()
    bodies: list[dict[str, Any]] = []
    original = receiver.handle

    async def handle(request: Any) -> Any:
        bodies.append(await request.json())
        return await original(request)

    receiver.handle = handle  # type: ignore[method-assign]
    async with bridged_server(str(tmp_path), as_port) as srv, receiver.running(as_port):
        bot = f"@_bridge_bot:{srv.server_name}"
        as_bot = RawClient(http, srv.base_url, AS_TOKEN, bot)
        await as_bot.request("PUT", f"/devices/{DEVICE}", json={}, params={"user_id": bot})
        alice = await olm_user(srv, http, "alice")
        room = await alice.raw.create_room(preset="private_chat", invite=[bot])
        assert (await as_bot.request("POST", f"/join/{quote(room)}", json={}, params={"user_id": bot}))[
            0
        ] == 200
        await alice.raw.ok(
            "PUT", "/sendToDevice/org.example.hello/t1", json={"messages": {bot: {DEVICE: {"n": 1}}}}
        )
        await alice.upload_keys()
        await alice.raw.send(room, "after", "t2")

        async def got_after() -> bool:
            return any(e.get("content", {}).get("body") == "after" for b in bodies for e in b["events"])

        await eventually(got_after, "the message after")
        assert all(set(b) <= {"events", "ephemeral"} for b in bodies)
        # Its device keeps the message for its own /sync.
        assert await ToDeviceStore(srv.hs.db).pending_count(bot, DEVICE) == 1
        await asyncio.sleep(0)


async def test_many_to_device_messages_go_in_steps(
    tmp_path: Any, http: aiohttp.ClientSession, monkeypatch: Any
) -> None:
    """A transaction carries at most MAX_INBOX_ROWS inbox rows' worth; the rest follow, in order."""
    monkeypatch.setattr(encryption_module, "MAX_INBOX_ROWS", 1)
    as_port = free_port()
    receiver = Receiver(fail_first=1)  # the first attempt fails: the next messages pile up meanwhile
    bodies: list[dict[str, Any]] = []
    original = receiver.handle

    async def handle(request: Any) -> Any:
        if len(receiver.attempts) >= receiver.fail_first:
            bodies.append(await request.json())
        return await original(request)

    receiver.handle = handle  # type: ignore[method-assign]
    async with bridged_server(str(tmp_path), as_port, ENCRYPTING) as srv, receiver.running(as_port):
        bot = f"@_bridge_bot:{srv.server_name}"
        as_bot = RawClient(http, srv.base_url, AS_TOKEN, bot)
        await as_bot.request("PUT", f"/devices/{DEVICE}", json={}, params={"user_id": bot})
        alice = await olm_user(srv, http, "alice")

        async def to_bridge(n: int) -> None:
            body = {"messages": {bot: {DEVICE: {"n": n}}}}
            await alice.raw.ok("PUT", f"/sendToDevice/org.example.hello/t{n}", json=body)

        await to_bridge(1)

        async def tried() -> bool:
            return bool(receiver.attempts)

        await eventually(tried, "a first attempt")
        for n in (2, 3, 4):
            await to_bridge(n)

        def received() -> list[int]:
            return [m["content"]["n"] for b in bodies for m in b.get(TO_DEVICE, [])]

        async def all_there() -> bool:
            return len(received()) >= 4

        await eventually(all_there, "every message")
        assert received() == [1, 2, 3, 4]
        assert all(len(b.get(TO_DEVICE, [])) <= 1 for b in bodies)

        # The server drops the rows once the service has answered, a moment after the test
        # saw the last transaction's body.
        async def delivered() -> bool:
            return await ToDeviceStore(srv.hs.db).pending_count(bot, DEVICE) == 0

        await eventually(delivered, "the inbox emptied")
