"""Room tags through mautrix, delivered as m.tag room account data in /sync."""

from __future__ import annotations

from mautrix.api import Method
from mautrix.client import Client
from mautrix.errors import MForbidden
from mautrix.types import RoomID, RoomTagInfo, UserID

from tests.support.server import RunningServer


async def test_tags_crud_and_sync(server: RunningServer) -> None:
    await server.register("alice")
    await server.register("bob")
    alice = Client(mxid=UserID(f"@alice:{server.server_name}"), base_url=server.base_url)
    bob = Client(mxid=UserID(f"@bob:{server.server_name}"), base_url=server.base_url)
    try:
        await alice.login(password="password")
        await bob.login(password="password")
        room_id = await alice.create_room()
        await alice.set_room_tag(room_id, "m.favourite", RoomTagInfo(order=0.25))
        await alice.set_room_tag(room_id, "u.work")
        tags = await alice.get_room_tags(room_id)
        assert set(tags.tags) == {"m.favourite", "u.work"}
        assert tags.tags["m.favourite"].order == 0.25
        await alice.remove_room_tag(room_id, "u.work")
        assert set((await alice.get_room_tags(room_id)).tags) == {"m.favourite"}

        synced = await alice.sync()
        room_data = synced["rooms"]["join"][room_id]["account_data"]["events"]
        assert {"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 0.25}}}} in room_data

        try:
            await bob.api.request(
                Method.GET,
                f"/_matrix/client/v3/user/{alice.mxid}/rooms/{RoomID(room_id)}/tags",
            )
            raise AssertionError("reading another user's tags must fail")
        except MForbidden:
            pass
    finally:
        await alice.api.session.close()
        await bob.api.session.close()
