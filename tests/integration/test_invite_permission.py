"""Invite permission (spec v1.18): a user who blocks invites gets none, by any way of
inviting, and pending ones are not shown until the block is lifted."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

from tests.integration.test_sliding_sync import sliding
from tests.support.http import RawClient

MakeUser = Callable[[str], Awaitable[RawClient]]
CONFIG = "m.invite_permission_config"


async def set_config(client: RawClient, content: dict[str, object]) -> None:
    await client.ok("PUT", f"/user/{quote(client.user_id)}/account_data/{CONFIG}", json=content)


async def test_blocked_invites_are_refused(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    carol = await make_user("carol")
    room = await alice.create_room()
    await set_config(bob, {"default_action": "block"})
    status, out = await alice.request("POST", f"/rooms/{quote(room)}/invite", json={"user_id": bob.user_id})
    assert (status, out["errcode"]) == (403, "M_INVITE_BLOCKED")
    path = f"/rooms/{quote(room)}/state/m.room.member/{quote(bob.user_id)}"
    status, out = await alice.request("PUT", path, json={"membership": "invite"})
    assert (status, out["errcode"]) == (403, "M_INVITE_BLOCKED")
    # createRoom: the room is made and the others invited; the one blocking is left out.
    made = await alice.create_room(invite=[bob.user_id, carol.user_id])
    members = await alice.ok("GET", f"/rooms/{quote(made)}/members")
    invited = {m["state_key"] for m in members["chunk"] if m["content"]["membership"] == "invite"}
    assert invited == {carol.user_id}
    # Other values do not block (the spec: missing, invalid or unknown means "as normal").
    await set_config(bob, {"default_action": "allow"})
    assert (await alice.request("POST", f"/rooms/{quote(room)}/invite", json={"user_id": bob.user_id}))[
        0
    ] == 200


async def test_pending_invites_are_hidden_while_blocked(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    dave = await make_user("dave")
    room = await alice.create_room(invite=[dave.user_id])
    assert room in (await dave.sync())["rooms"]["invite"]
    body = {"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": []}}}
    assert room in (await sliding(dave, body))["rooms"]
    kept = {**body, "conn_id": "kept"}
    first = await sliding(dave, kept)
    await set_config(dave, {"default_action": "block"})
    assert room not in (await dave.sync())["rooms"]["invite"]
    out = await sliding(dave, body)
    assert room not in out["rooms"] and out["lists"]["all"]["count"] == 0
    # The same on a connection that already had it (its next request reads the new value).
    later = await sliding(dave, kept, first["pos"])
    assert later["lists"]["all"]["count"] == 0
    await set_config(dave, {})
    assert (await sliding(dave, kept, later["pos"]))["lists"]["all"]["count"] == 1
    await set_config(dave, {"default_action": "block"})
    # The room's own state still shows the invite.
    members = await alice.ok("GET", f"/rooms/{quote(room)}/members")
    assert dave.user_id in {m["state_key"] for m in members["chunk"]}
    await set_config(dave, {})
    assert room in (await dave.sync())["rooms"]["invite"]
    assert (await dave.join(room))[0] == 200
