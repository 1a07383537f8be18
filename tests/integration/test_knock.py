"""Knocking: a knock shows up for the room's members and the knocker; an invite lets them in."""

from __future__ import annotations

from typing import Any

from mautrix.client import Client
from mautrix.errors import MatrixRequestError
from mautrix.types import EventType, Membership, MemberStateEventContent, RoomID, UserID

from tests.support.server import RunningServer


async def test_knock_then_invite_then_join(server: RunningServer) -> None:
    clients: list[Client] = []
    try:
        for name in ("alice", "bob"):
            await server.register(name)
            c = Client(mxid=UserID(f"@{name}:{server.server_name}"), base_url=server.base_url)
            await c.login(password="password")
            clients.append(c)
        alice, bob = clients
        room_id = await alice.create_room(initial_state=[
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}])
        await alice.sync()
        first: Any = await bob.sync()
        knocked = await bob.knock_room(room_id, reason="let me in")
        assert knocked == room_id

        member = await alice.get_state_event(room_id, EventType.ROOM_MEMBER, bob.mxid)
        assert isinstance(member, MemberStateEventContent)
        assert member.membership == Membership.KNOCK and member.reason == "let me in"
        synced: Any = await bob.sync(since=first["next_batch"])
        knock_state = synced["rooms"]["knock"][room_id]["knock_state"]["events"]
        assert any(e["type"] == "m.room.join_rules" for e in knock_state)
        assert any(e["type"] == "m.room.member" and e["state_key"] == bob.mxid for e in knock_state)

        await alice.invite_user(room_id, bob.mxid)
        await bob.join_room(RoomID(room_id))
        assert bob.mxid in await alice.get_joined_members(room_id)

        # Knocking on an invite-only room is refused by the auth rules.
        closed = await alice.create_room()
        try:
            await bob.knock_room(closed)
            raise AssertionError("knock on an invite-only room must fail")
        except MatrixRequestError as e:
            assert e.http_status == 403
    finally:
        for c in clients:
            await c.api.session.close()
