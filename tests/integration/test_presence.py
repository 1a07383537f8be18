"""Presence: explicit changes and timeouts, seen by a room peer through /sync."""

from __future__ import annotations

from mautrix.client import Client
from mautrix.errors import MForbidden
from mautrix.types import PresenceState, UserID
from nio import AsyncClient, PresenceEvent, SyncResponse

from homeserver.handlers.cs_services import CS_KEY
from homeserver.handlers.presence import IDLE_TIMEOUT_MS, SYNC_TIMEOUT_MS
from tests.support.nio_clients import nio_client
from tests.support.server import RunningServer


async def presence_of(client: AsyncClient, user_id: str) -> PresenceEvent | None:
    found: PresenceEvent | None = None
    for _ in range(3):
        resp = await client.sync(timeout=1000)
        assert isinstance(resp, SyncResponse)
        for event in resp.presence_events:
            if event.user_id == user_id:
                found = event
        if found is not None:
            return found
    return None


async def test_presence_change_seen_by_room_peer(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "bob") as bob:
        room_id = (await alice.room_create(invite=[bob.user_id])).room_id
        await bob.join(room_id)
        await bob.sync()
        first = await alice.sync()
        assert isinstance(first, SyncResponse)
        # Joining is activity: bob is online in alice's initial sync.
        initial = [e for e in first.presence_events if e.user_id == bob.user_id]
        assert initial and initial[0].presence == "online"

        await bob.set_presence("unavailable", "at lunch")
        seen = await presence_of(alice, bob.user_id)
        assert seen is not None
        assert seen.presence == "unavailable" and seen.status_msg == "at lunch"

        # Timeouts run on the injected clock: long enough without a sync, bob goes offline.
        presence = server.runner.app[CS_KEY].presence
        await presence.handle_timeouts(server.hs.clock.time_ms() + SYNC_TIMEOUT_MS + IDLE_TIMEOUT_MS)
        seen = await presence_of(alice, bob.user_id)
        assert seen is not None and seen.presence == "offline"


async def test_idle_user_becomes_unavailable(server: RunningServer) -> None:
    async with nio_client(server, "carol") as carol:
        await carol.sync()
        presence = server.runner.app[CS_KEY].presence
        # Still syncing but idle for longer than the idle timeout.
        now = server.hs.clock.time_ms() + IDLE_TIMEOUT_MS + 1000
        await presence.user_syncing(carol.user_id, None)
        for state in presence._local.values():
            state.last_sync_ts = now
        await presence.handle_timeouts(now)
        row = await presence.store.get(carol.user_id)
        assert row is not None and row.state == "unavailable"


async def test_mautrix_get_and_set_presence(server: RunningServer) -> None:
    clients = []
    try:
        for name in ("dave", "erin", "stranger"):
            await server.register(name)
            c = Client(mxid=UserID(f"@{name}:{server.server_name}"), base_url=server.base_url)
            await c.login(password="password")
            clients.append(c)
        dave, erin, stranger = clients
        room_id = await dave.create_room(invitees=[erin.mxid])
        await erin.join_room(room_id)
        await dave.set_presence(PresenceState.ONLINE, "coding")
        got = await erin.get_presence(dave.mxid)
        assert got.presence == PresenceState.ONLINE and got.status_msg == "coding"
        try:
            await stranger.get_presence(dave.mxid)
            raise AssertionError("a stranger must not see presence")
        except MForbidden:
            pass
    finally:
        for c in clients:
            await c.api.session.close()
