"""The space hierarchy over federation, between two Sotto servers: a space on A whose
children live on B is walked through B's /_matrix/federation/v1/hierarchy."""

from __future__ import annotations

import aiohttp

from tests.federation.support import CertAuthority, Client, fed_server


async def add_child(owner: Client, space: str, child: str, server: str) -> None:
    await owner.state(space, "m.space.child", {"via": [server]}, state_key=child)


async def test_a_space_with_children_on_another_server(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        space_type = {"creation_content": {"type": "m.space"}}
        # On B: a public room, and a public sub-space holding a public and a private room.
        general = await bob.create_room(preset="public_chat", name="B general")
        sub = await bob.create_room(preset="public_chat", name="B space", **space_type)
        deep = await bob.create_room(preset="public_chat", name="B deep")
        private = await bob.create_room(preset="private_chat", name="B private")
        for child in (deep, private):
            await add_child(bob, sub, child, b.server_name)
        # On A: a space holding a local room and both of B's.
        space = await alice.create_room(preset="public_chat", name="A space", **space_type)
        local = await alice.create_room(preset="public_chat", name="A local")
        await add_child(alice, space, local, a.server_name)
        for child in (general, sub):
            await add_child(alice, space, child, b.server_name)

        rooms = {r["room_id"]: r for r in await alice.hierarchy(space)}
        assert set(rooms) == {space, local, general, sub, deep}  # not B's private room
        assert rooms[general]["name"] == "B general" and rooms[general]["num_joined_members"] == 1
        assert rooms[sub]["room_type"] == "m.space"
        assert {c["state_key"] for c in rooms[sub]["children_state"]} == {deep, private}
        assert rooms[deep]["join_rule"] == "public"
        # max_depth stops the walk before B's sub-space's children.
        shallow = {r["room_id"] for r in await alice.hierarchy(space, max_depth="1")}
        assert shallow == {space, local, general, sub}

        # What B told A, asked directly: the private room is listed as inaccessible.
        answer = await a.hs.rooms.remote_hierarchy(sub, [b.server_name], False)  # type: ignore[misc]
        assert answer is not None
        assert [c["room_id"] for c in answer["children"]] == [deep]
        assert answer["inaccessible_children"] == [private]
        assert answer["room"]["name"] == "B space"
        # A room B does not know, or a server that is not there: nothing, no error.
        assert await a.hs.rooms.remote_hierarchy("!nope:" + b.server_name, [b.server_name], False) is None  # type: ignore[misc]
