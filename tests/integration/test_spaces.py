"""Spaces: /hierarchy walks m.space.child links; /room_summary previews rooms."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from tests.support.http import RawClient
from tests.support.server import RunningServer


async def test_hierarchy_and_room_summary(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as session:
        logins = [await server.login(n) for n in ("alice", "bob")]
        alice, bob = (RawClient(session, server.base_url, lg["access_token"], lg["user_id"]) for lg in logins)
        space = await alice.create_room(preset="public_chat", name="The Space",
                                        creation_content={"type": "m.space"})
        general = await alice.create_room(preset="public_chat", name="General", topic="chat")
        secret = await alice.create_room(name="Secret")
        sub = await alice.create_room(preset="public_chat", name="Sub space",
                                      creation_content={"type": "m.space"})
        leaf = await alice.create_room(preset="public_chat", name="Leaf")
        via = {"via": [server.server_name]}
        for parent, child, order in ((space, general, "b"), (space, secret, "c"), (space, sub, "a"),
                                     (sub, leaf, "a")):
            await alice.ok("PUT", f"/rooms/{quote(parent)}/state/m.space.child/{quote(child)}",
                           json={**via, "order": order})

        v1 = "/_matrix/client/v1"
        tree = await bob.ok("GET", f"{v1}/rooms/{quote(space)}/hierarchy")
        names = [r.get("name") for r in tree["rooms"]]
        # Depth first, children by `order`; bob cannot preview the invite-only room.
        assert names == ["The Space", "Sub space", "Leaf", "General"]
        root = tree["rooms"][0]
        assert root["room_type"] == "m.space" and root["num_joined_members"] == 1
        assert {c["state_key"] for c in root["children_state"]} == {general, secret, sub}
        assert "next_batch" not in tree

        page1 = await bob.ok("GET", f"{v1}/rooms/{quote(space)}/hierarchy", params={"limit": "2"})
        page2 = await bob.ok("GET", f"{v1}/rooms/{quote(space)}/hierarchy",
                             params={"limit": "2", "from": page1["next_batch"]})
        assert [r["name"] for r in page1["rooms"] + page2["rooms"]] == names
        shallow = await bob.ok("GET", f"{v1}/rooms/{quote(space)}/hierarchy", params={"max_depth": "0"})
        assert [r["name"] for r in shallow["rooms"]] == ["The Space"]

        summary = await bob.ok("GET", f"{v1}/room_summary/{quote(general)}")
        assert summary["name"] == "General" and summary["topic"] == "chat"
        assert summary["membership"] == "leave" and summary["join_rule"] == "public"
        anonymous = RawClient(session, server.base_url)
        status, body = await anonymous.request("GET", f"{v1}/room_summary/{quote(general)}")
        assert status == 200 and "membership" not in body
        status, body = await bob.request("GET", f"{v1}/room_summary/{quote(secret)}")
        assert status == 404
        mine = await alice.ok("GET", f"{v1}/room_summary/{quote(secret)}")
        assert mine["membership"] == "join"
