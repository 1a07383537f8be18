"""The core loop driven by mautrix-python, an independent Matrix client library."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mautrix.client import Client
from mautrix.errors import MForbidden, MNotFound
from mautrix.types import (
    EventType,
    Membership,
    MemberStateEventContent,
    PaginationDirection,
    RoomCreatePreset,
    RoomID,
    RoomNameStateEventContent,
    TextMessageEventContent,
    UserID,
)

from tests.support.server import RunningServer


@asynccontextmanager
async def mautrix_client(server: RunningServer, localpart: str) -> AsyncIterator[Client]:
    await server.register(localpart)
    client = Client(mxid=UserID(f"@{localpart}:{server.server_name}"), base_url=server.base_url)
    try:
        await client.login(password="password")
        yield client
    finally:
        await client.api.session.close()


async def test_mautrix_rooms_messages_and_state(server: RunningServer) -> None:
    async with mautrix_client(server, "alice") as alice, mautrix_client(server, "bob") as bob:
        room_id = await alice.create_room(
            preset=RoomCreatePreset.PUBLIC, name="mautrix room", topic="testing"
        )
        await bob.join_room(room_id, max_retries=0)
        assert set(await alice.get_joined_members(room_id)) == {alice.mxid, bob.mxid}
        event_id = await bob.send_text(room_id, "hello from mautrix")
        event = await alice.get_event(room_id, event_id)
        assert (
            isinstance(event.content, TextMessageEventContent) and event.content.body == "hello from mautrix"
        )
        name = await alice.get_state_event(room_id, EventType.ROOM_NAME)
        assert isinstance(name, RoomNameStateEventContent) and name.name == "mautrix room"
        messages = await alice.get_messages(room_id, PaginationDirection.BACKWARD, limit=3)
        # PaginatedMessages is a functional NamedTuple whose fields mypy cannot see.
        chunk: list[Any] = messages[2]  # type: ignore[misc]
        assert chunk[0].event_id == event_id
        members = await alice.get_members(room_id)
        joined = {
            m.state_key
            for m in members
            if isinstance(m.content, MemberStateEventContent) and m.content.membership == Membership.JOIN
        }
        assert joined == {alice.mxid, bob.mxid}
        assert room_id in await bob.get_joined_rooms()
        await bob.leave_room(room_id)
        assert room_id not in await bob.get_joined_rooms()


async def test_mautrix_errors_are_typed(server: RunningServer) -> None:
    async with mautrix_client(server, "alice") as alice, mautrix_client(server, "bob") as bob:
        room_id = await alice.create_room(preset=RoomCreatePreset.PRIVATE)
        try:
            await bob.join_room(room_id, max_retries=0)
            raise AssertionError("joining an invite-only room must fail")
        except MForbidden:
            pass
        try:
            await bob.join_room(RoomID("!missing:" + server.server_name), max_retries=0)
            raise AssertionError("joining an unknown room must fail")
        except MNotFound:
            pass
