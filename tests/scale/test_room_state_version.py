"""A worker's cached room state across the other worker's writes (rooms.state_version).

Two workers of one homeserver run in this process on one PostgreSQL database, so a test
can look at each one's room cache. Every event moves the room's extremities; only a
change to the current state (or a redacted state event) moves its state version. A
worker that takes the room's lock after the other stored messages keeps its cached auth
state and only moves its head; after a state change it reads the room afresh.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from homeserver.storage.events import EventStore
from homeserver.storage.schema import current_state, rooms
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

MESSAGE = {"msgtype": "m.text", "body": "x"}


@pytest.fixture
async def two_workers(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    common: dict[str, Any] = {
        "server_name": "workers.test",
        "signing_key_path": str(tmp_path / "signing.key"),
        "database": {"url": pg_url},
        "workers": {"count": 2},
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with run_server(str(tmp_path / "a"), **common) as a, run_server(str(tmp_path / "b"), **common) as b:
        assert not a.hs.events.cache_state and not b.hs.events.cache_state
        yield a, b


async def _room(server: RunningServer) -> tuple[str, str]:
    login = await server.login("alice")
    async with aiohttp.ClientSession() as s:
        room = await RawClient(s, server.base_url, login["access_token"]).create_room()
    return room, str(login["user_id"])


async def _send(server: RunningServer, room: str, sender: str, **event: Any) -> str:
    fields: dict[str, Any] = {"type": "m.room.message", "content": MESSAGE, **event}
    # The other worker's lock, still lingering after its last use, is waited for.
    made, _ = await server.hs.creator.create_and_send(room_id=room, sender=sender, **fields)
    return made.event_id


async def _version(store: EventStore, room: str) -> int:
    async with store.db.read() as conn:
        return int(
            (await conn.execute(select(rooms.c.state_version).where(rooms.c.room_id == room))).scalar_one()
        )


async def test_messages_of_another_worker_keep_the_cached_state(
    two_workers: tuple[RunningServer, RunningServer],
) -> None:
    a, b = two_workers
    room, alice = await _room(a)
    await _send(b, room, alice)
    await _send(a, room, alice)  # reads the room afresh after B's write: its state version too
    cached = a.hs.events._cache(room)
    assert cached is not None and cached.state  # the auth state the message was built from
    version = await _version(a.hs.events, room)
    assert cached.state_version == version

    from_b = await _send(b, room, alice)
    assert await _version(a.hs.events, room) == version  # a message leaves it alone
    after = await _send(a, room, alice)
    assert a.hs.events._cache(room) is cached  # kept, not read afresh
    stored = await a.hs.events.get_event(after)
    assert stored is not None and stored.event.prev_event_ids == [from_b]  # the head moved


@pytest.mark.parametrize("change", ["state event", "redacted state event"])
async def test_a_state_change_by_another_worker_drops_the_cached_state(
    two_workers: tuple[RunningServer, RunningServer], change: str
) -> None:
    a, b = two_workers
    room, alice = await _room(a)
    topic = await _send(a, room, alice, type="m.room.topic", state_key="", content={"topic": "one"})
    await _send(b, room, alice)
    await _send(a, room, alice)
    cached = a.hs.events._cache(room)
    assert cached is not None
    version = await _version(a.hs.events, room)
    assert cached.state_version == version

    if change == "state event":
        await _send(b, room, alice, type="m.room.topic", state_key="", content={"topic": "two"})
    else:
        await _send(b, room, alice, type="m.room.redaction", content={}, redacts=topic)
    assert await _version(b.hs.events, room) == version + 1
    await _send(a, room, alice)
    assert a.hs.events._cache(room) is not cached
    assert (await a.hs.events.get_current_state(room, [("m.room.topic", "")]))[("m.room.topic", "")]


async def test_a_redacted_message_leaves_the_state_version(
    two_workers: tuple[RunningServer, RunningServer],
) -> None:
    a, b = two_workers
    room, alice = await _room(a)
    message = await _send(a, room, alice)
    version = await _version(a.hs.events, room)
    await _send(b, room, alice, type="m.room.redaction", content={}, redacts=message)
    assert await _version(a.hs.events, room) == version


async def test_state_applied_from_federation_moves_the_state_version(
    two_workers: tuple[RunningServer, RunningServer],
) -> None:
    """The federation paths (a remote event's state delta, a remote join, an invite from a
    room this server is not in) all change current state through `_apply_state_changes`."""
    a, _ = two_workers
    room, _ = await _room(a)
    store = a.hs.events
    version = await _version(store, room)
    async with store.db.read() as conn:
        row = (
            await conn.execute(
                select(current_state.c.event_id, current_state.c.stream_id).where(
                    current_state.c.room_id == room, current_state.c.type == "m.room.create"
                )
            )
        ).one()
    async with store._room_write(room) as conn:
        await store._apply_state_changes(conn, room, {("m.room.create", ""): (row[0], None)}, row[1])
    assert await _version(store, room) == version + 1
