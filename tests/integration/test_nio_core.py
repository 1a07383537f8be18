"""The core loop driven by matrix-nio, a real Matrix client library."""

from __future__ import annotations

import asyncio

from nio import (
    AsyncClient,
    JoinError,
    JoinResponse,
    MessageDirection,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomPreset,
    RoomPutStateError,
    RoomRedactResponse,
    RoomSendError,
    RoomSendResponse,
    RoomVisibility,
    SyncResponse,
    WhoamiResponse,
)

from tests.support.nio_clients import nio_client
from tests.support.server import RunningServer


async def send_text(client: AsyncClient, room_id: str, body: str) -> str:
    resp = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
    assert isinstance(resp, RoomSendResponse), resp
    return str(resp.event_id)


async def test_public_room_chat_both_ways(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "bob") as bob:
        who = await alice.whoami()
        assert isinstance(who, WhoamiResponse) and who.user_id == alice.user_id
        created = await alice.room_create(
            visibility=RoomVisibility.public, name="Town square", preset=RoomPreset.public_chat, alias="town"
        )
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        joined = await bob.join(f"#town:{server.server_name}")
        assert isinstance(joined, JoinResponse) and joined.room_id == room_id
        await alice.sync()
        await bob.sync()
        await send_text(alice, room_id, "hello bob")
        await send_text(bob, room_id, "hello alice")
        for client, expected in ((alice, "hello bob"), (bob, "hello alice")):
            resp = await client.sync(timeout=1000)
            assert isinstance(resp, SyncResponse)
            bodies = [
                e.body for e in resp.rooms.join[room_id].timeline.events if isinstance(e, RoomMessageText)
            ]
            assert expected in bodies
        assert alice.rooms[room_id].display_name == "Town square"
        assert set(bob.rooms[room_id].users) == {alice.user_id, bob.user_id}


async def test_long_poll_sync_wakes_up(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "bob") as bob:
        room_id = (await alice.room_create(invite=[bob.user_id], is_direct=True)).room_id
        await bob.sync()
        assert room_id in bob.invited_rooms
        assert isinstance(await bob.join(room_id), JoinResponse)
        await bob.sync()

        async def later() -> None:
            await asyncio.sleep(0.2)
            await send_text(alice, room_id, "ping")

        task = asyncio.create_task(later())
        resp = await bob.sync(timeout=15_000)
        await task
        assert isinstance(resp, SyncResponse)
        assert [
            e.body for e in resp.rooms.join[room_id].timeline.events if isinstance(e, RoomMessageText)
        ] == ["ping"]


async def test_private_room_needs_invite(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "eve") as eve:
        room_id = (await alice.room_create(preset=RoomPreset.private_chat)).room_id
        resp = await eve.join(room_id)
        assert isinstance(resp, JoinError) and resp.status_code == "M_FORBIDDEN"
        await alice.room_invite(room_id, eve.user_id)
        assert isinstance(await eve.join(room_id), JoinResponse)


async def test_history_pagination(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice:
        room_id = (await alice.room_create()).room_id
        sent = [await send_text(alice, room_id, f"message {i}") for i in range(30)]
        sync = await alice.sync(sync_filter={"room": {"timeline": {"limit": 5}}})
        assert isinstance(sync, SyncResponse)
        token = sync.rooms.join[room_id].timeline.prev_batch
        seen: list[str] = [e.event_id for e in sync.rooms.join[room_id].timeline.events]
        while token:
            page = await alice.room_messages(room_id, start=token, direction=MessageDirection.back, limit=8)
            assert isinstance(page, RoomMessagesResponse)
            seen = [e.event_id for e in reversed(page.chunk)] + seen
            token = page.end if page.chunk else None
        assert [e for e in seen if e in set(sent)] == sent


async def test_typing_receipts_and_redaction(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "bob") as bob:
        room_id = (await alice.room_create(preset=RoomPreset.public_chat)).room_id
        await bob.join(room_id)
        await alice.sync()
        await bob.sync()
        event_id = await send_text(alice, room_id, "oops")
        await alice.room_typing(room_id, typing_state=True, timeout=10_000)
        await alice.room_read_markers(room_id, event_id, event_id)
        await bob.sync(timeout=1000)
        assert alice.user_id in bob.rooms[room_id].typing_users
        assert bob.rooms[room_id].read_receipts[alice.user_id].event_id == event_id
        redacted = await alice.room_redact(room_id, event_id, reason="typo")
        assert isinstance(redacted, RoomRedactResponse)
        page = await bob.room_messages(room_id, limit=5)
        assert isinstance(page, RoomMessagesResponse)
        original = next(e for e in page.chunk if e.event_id == event_id)
        assert original.source["content"] == {}
        assert original.source["unsigned"]["redacted_because"]["content"]["reason"] == "typo"


async def test_kick_ban_and_power_levels(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "bob") as bob:
        room_id = (await alice.room_create(preset=RoomPreset.public_chat)).room_id
        await bob.join(room_id)
        # Bob (power 0) may talk but may not rename the room (state_default 50).
        await send_text(bob, room_id, "hi")
        denied = await bob.room_put_state(room_id, "m.room.name", {"name": "Bob's room"})
        assert isinstance(denied, RoomPutStateError) and denied.status_code == "M_FORBIDDEN"
        await alice.room_kick(room_id, bob.user_id, reason="cool down")
        resp = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "let me in"})
        assert isinstance(resp, RoomSendError) and resp.status_code == "M_FORBIDDEN"
        assert isinstance(await bob.join(room_id), JoinResponse)
        await alice.room_ban(room_id, bob.user_id, reason="enough")
        rejoin = await bob.join(room_id)
        assert isinstance(rejoin, JoinError) and rejoin.status_code == "M_FORBIDDEN"
        await alice.room_unban(room_id, bob.user_id)
        assert isinstance(await bob.join(room_id), JoinResponse)


async def test_leave_and_forget(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice:
        room_id = (await alice.room_create()).room_id
        await alice.sync()
        await alice.room_leave(room_id)
        await alice.room_forget(room_id)
        resp = await alice.joined_rooms()
        assert room_id not in resp.rooms
