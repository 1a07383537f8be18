"""Blocking rooms (PUT /_synapse/admin/v1/rooms/{roomId}/block, and deleting with "block"):
no local user joins, knocks on or is invited to a blocked room."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from tests.security.test_admin_api import A1, A2, user
from tests.support.server import RunningServer


async def test_a_blocked_room_takes_no_one_in(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    bob = await user(server, http, "bob")
    room = await alice.create_room(preset="public_chat", room_version="12")
    path = f"{A1}/rooms/{quote(room)}/block"
    assert await admin.ok("GET", path) == {"block": False}
    assert await admin.ok("PUT", path, json={"block": True}) == {"block": True}
    assert await admin.ok("GET", path) == {"block": True, "user_id": admin.user_id}

    status, out = await bob.request("POST", f"/join/{quote(room)}", json={})
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN") and "blocked" in out["error"]
    status, out = await alice.request("POST", f"/rooms/{quote(room)}/invite", json={"user_id": bob.user_id})
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    await alice.ok("PUT", f"/rooms/{quote(room)}/state/m.room.join_rules", json={"join_rule": "knock"})
    status, out = await bob.request("POST", f"/knock/{quote(room)}", json={})
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    # Those already in stay (blocking is not deleting), and may still talk.
    await alice.send(room, "still here", "t1")

    assert await admin.ok("PUT", path, json={"block": False}) == {"block": False}
    assert await admin.ok("GET", path) == {"block": False}
    await bob.ok("POST", f"/knock/{quote(room)}", json={})
    status, out = await admin.request("PUT", path, json={"block": "yes"})
    assert (status, out["errcode"]) == (400, "M_BAD_JSON")


async def test_deleting_with_block(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    room = await alice.create_room(preset="public_chat")
    out = await admin.ok("DELETE", f"{A1}/rooms/{quote(room)}", json={"block": True})
    assert out["kicked_users"] == [alice.user_id]
    # Purged, and the block outlives the room: the ID cannot be joined again.
    assert (await admin.ok("GET", f"{A1}/rooms/{quote(room)}/block"))["block"] is True
    status, body = await alice.request("POST", f"/join/{quote(room)}", json={})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")

    # A room this server never knew can be blocked before anyone here tries it (v1 only).
    unknown = "!elsewhere:remote.example"
    assert (await admin.ok("DELETE", f"{A1}/rooms/{quote(unknown)}", json={"block": True}))[
        "kicked_users"
    ] == []
    status, body = await alice.request("POST", f"/join/{quote(unknown)}", json={})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await admin.request(
        "DELETE", f"{A2}/rooms/{quote('!nope:' + server.server_name)}", json={}
    )
    assert status == 404

    # The v2 deletion blocks too.
    other = await alice.create_room(preset="public_chat")
    await admin.ok("DELETE", f"{A2}/rooms/{quote(other)}", json={"block": True, "purge": False})
    assert (await admin.ok("GET", f"{A1}/rooms/{quote(other)}/block"))["block"] is True
