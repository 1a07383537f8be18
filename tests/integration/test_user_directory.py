"""User directory: finds room peers and users in public rooms, never strangers."""

from __future__ import annotations

from mautrix.api import Method
from mautrix.client import Client
from mautrix.types import RoomCreatePreset, UserID

from tests.support.nio_clients import nio_client
from tests.support.server import RunningServer


async def test_directory_finds_room_peer_not_stranger(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "bobby") as bob, \
            nio_client(server, "bobcat") as stranger, nio_client(server, "searcher") as searcher:
        room_id = (await alice.room_create(invite=[bob.user_id])).room_id
        await bob.join(room_id)
        await stranger.room_create()  # a private room of their own
        await bob.set_displayname("Bob Builder")

        alice_m = Client(mxid=UserID(alice.user_id), base_url=server.base_url, token=alice.access_token)
        searcher_m = Client(mxid=UserID(searcher.user_id), base_url=server.base_url,
                            token=searcher.access_token)
        try:
            results = await alice_m.search_users("bob")
            assert [r.user_id for r in results.results] == [bob.user_id]
            # mautrix reads "displayname", the spec's field is "display_name": check it raw.
            raw = await alice_m.api.request(Method.POST, "/_matrix/client/v3/user_directory/search",
                                            {"search_term": "bob"})
            assert raw["results"][0]["display_name"] == "Bob Builder"
            assert not raw["limited"]
            by_name = await alice_m.search_users("builder")
            assert [r.user_id for r in by_name.results] == [bob.user_id]
            # LIKE's wildcards in a search term are taken literally.
            for term in ("b_b", "b%y"):
                assert (await alice_m.search_users(term)).results == []

            assert (await searcher_m.search_users("bob")).results == []
            # Users in public rooms are findable by anyone.
            public = await alice_m.create_room(preset=RoomCreatePreset.PUBLIC)
            await stranger.join(public)
            found = await searcher_m.search_users("bobcat")
            assert [r.user_id for r in found.results] == [stranger.user_id]
            limited = await alice_m.search_users("b", limit=1)
            assert len(limited.results) == 1
        finally:
            await searcher_m.api.session.close()
            await alice_m.api.session.close()
