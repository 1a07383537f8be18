"""The Synapse-compatible admin API: admin tokens only, users (list, query, deactivate,
reset password) and rooms (list, details, members, state, delete and purge)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from sqlalchemy import func, select

from homeserver.storage import all_schemas  # noqa: F401
from homeserver.storage.schema import metadata
from tests.security.support import Client, raw
from tests.support.server import RunningServer

A1 = "/_synapse/admin/v1"
A2 = "/_synapse/admin/v2"


async def user(server: RunningServer, http: aiohttp.ClientSession, name: str, admin: bool = False) -> Client:
    user_id = await server.register(name, admin=admin)
    token, _ = await server.hs.auth.create_session(user_id, None, None)
    return Client(http, server.base_url, token, user_id)


async def login_status(server: RunningServer, http: aiohttp.ClientSession, name: str, password: str) -> int:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": name},
        "password": password,
    }
    status, _, _ = await raw(http, "POST", f"{server.base_url}/_matrix/client/v3/login", json=body)
    return status


ENDPOINTS = [
    ("GET", A1 + "/server_version"),
    ("GET", A2 + "/users"),
    ("GET", A2 + "/users/{user}"),
    ("POST", A1 + "/deactivate/{user}"),
    ("POST", A1 + "/reset_password/{user}"),
    ("GET", A1 + "/rooms"),
    ("GET", A1 + "/rooms/{room}"),
    ("GET", A1 + "/rooms/{room}/members"),
    ("GET", A1 + "/rooms/{room}/state"),
    ("DELETE", A1 + "/rooms/{room}"),
    ("DELETE", A2 + "/rooms/{room}"),
    ("GET", A2 + "/rooms/{room}/delete_status"),
    ("GET", A2 + "/rooms/delete_status/abc"),
]


async def test_admin_only(server: RunningServer, http: aiohttp.ClientSession) -> None:
    bob = await user(server, http, "bob")
    room = await bob.create_room()
    for method, path in ENDPOINTS:
        url = server.base_url + path.replace("{user}", quote(bob.user_id)).replace("{room}", quote(room))
        body = {"new_password": "x"} if "reset_password" in path else {}
        status, out, _ = await raw(http, method, url, token=bob.token, json=body)
        assert (status, out["errcode"]) == (403, "M_FORBIDDEN"), (path, out)
        status, out, _ = await raw(http, method, url, json=body)
        assert (status, out["errcode"]) == (401, "M_MISSING_TOKEN"), (path, out)
        status, out, _ = await raw(http, method, url, token="nope", json=body)
        assert (status, out["errcode"]) == (401, "M_UNKNOWN_TOKEN"), (path, out)
    # Nothing happened to bob or his room.
    assert await login_status(server, http, "bob", "password") == 200
    assert room in (await bob.ok("GET", "/joined_rooms"))["joined_rooms"]


async def test_users(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "admin", admin=True)
    for name in ("carol", "dave", "erin"):
        await server.register(name)
    status, out, _ = await raw(http, "GET", server.base_url + A1 + "/server_version", token=admin.token)
    assert status == 200 and isinstance(out["server_version"], str)

    out = await admin.ok("GET", A2 + "/users", params={"limit": "2"})
    assert out["total"] == 4 and len(out["users"]) == 2 and out["next_token"] == "2"
    assert [u["name"] for u in out["users"]] == sorted(u["name"] for u in out["users"])
    rest = await admin.ok("GET", A2 + "/users", params={"limit": "2", "from": out["next_token"]})
    assert "next_token" not in rest
    names = {u["name"] for u in out["users"] + rest["users"]}
    assert names == {f"@{n}:{server.server_name}" for n in ("admin", "carol", "dave", "erin")}
    out = await admin.ok("GET", A2 + "/users", params={"name": "dav"})
    assert [u["name"] for u in out["users"]] == [f"@dave:{server.server_name}"]
    out = await admin.ok("GET", A2 + "/users", params={"admins": "true"})
    assert [u["admin"] for u in out["users"]] == [True]

    one = await admin.ok("GET", A2 + f"/users/{quote('@carol:' + server.server_name)}")
    assert one["name"] == f"@carol:{server.server_name}" and one["deactivated"] is False
    assert isinstance(one["creation_ts"], int) and one["admin"] is False
    status, out, _ = await raw(
        http,
        "GET",
        server.base_url + A2 + f"/users/{quote('@nobody:' + server.server_name)}",
        token=admin.token,
    )
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")
    status, out, _ = await raw(
        http, "GET", server.base_url + A2 + f"/users/{quote('@x:elsewhere.example')}", token=admin.token
    )
    assert (status, out["errcode"]) == (400, "M_INVALID_PARAM")


async def test_reset_password(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "admin", admin=True)
    carol = await user(server, http, "carol")
    url = A1 + f"/reset_password/{quote(carol.user_id)}"
    status, out = await admin.request("POST", url, json={"new_password": 5})
    assert (status, out["errcode"]) == (400, "M_BAD_JSON")
    await admin.ok("POST", url, json={"new_password": "n3w-secret"})
    assert await login_status(server, http, "carol", "password") == 403
    assert await login_status(server, http, "carol", "n3w-secret") == 200
    # logout_devices defaults to true: the old session is gone.
    status, out = await carol.request("GET", "/account/whoami")
    assert (status, out["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_deactivate(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "admin", admin=True)
    carol = await user(server, http, "carol")
    room = await admin.create_room(preset="public_chat")
    assert (await carol.join(room))[0] == 200
    await admin.ok("POST", A1 + f"/deactivate/{quote(carol.user_id)}", json={"erase": True})
    status, out = await carol.request("GET", "/account/whoami")
    assert (status, out["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert await login_status(server, http, "carol", "password") == 403
    members = await admin.ok("GET", f"/rooms/{quote(room)}/joined_members")
    assert carol.user_id not in members["joined"]
    listed = await admin.ok("GET", A2 + "/users")
    assert carol.user_id not in {u["name"] for u in listed["users"]}
    listed = await admin.ok("GET", A2 + "/users", params={"deactivated": "true"})
    assert {u["name"]: u["deactivated"] for u in listed["users"]}[carol.user_id] is True
    one = await admin.ok("GET", A2 + f"/users/{quote(carol.user_id)}")
    assert one["deactivated"] is True and one["displayname"] is None


async def test_rooms(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "admin", admin=True)
    bob = await user(server, http, "bob")
    big = await bob.create_room(name="Big room", visibility="public", room_alias_name="big")
    small = await bob.create_room(name="Another")
    await admin.join(big)
    out = await admin.ok("GET", A1 + "/rooms")
    assert out["total_rooms"] == 2 and out["offset"] == 0
    assert [r["name"] for r in out["rooms"]] == ["Another", "Big room"]
    by_members = await admin.ok("GET", A1 + "/rooms", params={"order_by": "joined_members", "dir": "b"})
    first = by_members["rooms"][0]
    assert first["room_id"] == big and first["joined_members"] == 2 and first["joined_local_members"] == 2
    assert first["canonical_alias"] == f"#big:{server.server_name}" and first["public"] is True
    assert first["join_rules"] == "public" and first["version"] == "12" and first["state_events"] >= 6
    found = await admin.ok("GET", A1 + "/rooms", params={"search_term": "anoth"})
    assert [r["room_id"] for r in found["rooms"]] == [small]
    page = await admin.ok("GET", A1 + "/rooms", params={"limit": "1"})
    assert len(page["rooms"]) == 1 and page["next_batch"] == 1
    status, out = await admin.request("GET", A1 + "/rooms", params={"order_by": "bogus"})
    assert (status, out["errcode"]) == (400, "M_INVALID_PARAM")

    details = await admin.ok("GET", A1 + f"/rooms/{quote(big)}")
    assert details["name"] == "Big room" and details["joined_local_devices"] == 2
    members = await admin.ok("GET", A1 + f"/rooms/{quote(big)}/members")
    assert members == {"members": sorted([admin.user_id, bob.user_id]), "total": 2}
    state = await admin.ok("GET", A1 + f"/rooms/{quote(big)}/state")
    assert {e["type"] for e in state["state"]} >= {"m.room.create", "m.room.name", "m.room.member"}
    status, out = await admin.request("GET", A1 + f"/rooms/{quote('!unknown:' + server.server_name)}")
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")


async def rows_for_room(server: RunningServer, room_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with server.hs.db.read() as conn:
        for table in metadata.sorted_tables:
            if "room_id" in table.c and table.name != "e2e_room_keys":
                n = (await conn.execute(select(func.count()).where(table.c.room_id == room_id))).scalar_one()
                if n:
                    counts[table.name] = n
    return counts


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_delete_and_purge_room(
    server: RunningServer, http: aiohttp.ClientSession, version: str
) -> None:
    admin = await user(server, http, "admin", admin=True)
    bob = await user(server, http, "bob")
    carol = await user(server, http, "carol")
    room = await bob.create_room(preset="public_chat", room_alias_name="doomed", invite=[carol.user_id])
    keep = await bob.create_room()
    for i in range(5):
        await bob.send(room, f"message {i}", f"t{i}")
    await bob.ok("PUT", f"/user/{quote(bob.user_id)}/rooms/{quote(room)}/account_data/m.tag", json={"a": 1})
    before = await rows_for_room(server, room)
    assert before["events"] >= 10 and before["current_state"] >= 5

    if version == "v1":
        out = await admin.ok("DELETE", A1 + f"/rooms/{quote(room)}", json={})
    else:
        delete_id = (await admin.ok("DELETE", A2 + f"/rooms/{quote(room)}", json={}))["delete_id"]
        for _ in range(100):
            status_body = await admin.ok("GET", A2 + f"/rooms/delete_status/{delete_id}")
            if status_body["status"] in ("complete", "failed"):
                break
            await asyncio.sleep(0.05)
        assert status_body["status"] == "complete", status_body
        by_room = await admin.ok("GET", A2 + f"/rooms/{quote(room)}/delete_status")
        assert by_room["results"][0]["delete_id"] == delete_id
        out = status_body["shutdown_room"]
    assert sorted(out["kicked_users"]) == sorted([bob.user_id, carol.user_id])
    assert out["local_aliases"] == [f"#doomed:{server.server_name}"]

    assert await rows_for_room(server, room) == {}
    assert (await admin.request("GET", A1 + f"/rooms/{quote(room)}"))[0] == 404
    status, body = await bob.request("GET", f"/directory/room/{quote('#doomed:' + server.server_name)}")
    assert status == 404
    status, body = await bob.request(
        "PUT", f"/rooms/{quote(room)}/send/m.room.message/after", json={"msgtype": "m.text", "body": "x"}
    )
    assert status in (403, 404), body
    assert (await bob.ok("GET", "/joined_rooms"))["joined_rooms"] == [keep]
    # The other room is untouched and the server keeps working.
    await bob.send(keep, "still here", "k1")
    sync: dict[str, Any] = await bob.sync()
    assert room not in sync.get("rooms", {}).get("join", {})


async def test_delete_room_rejects_unsupported_options(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(server, http, "admin", admin=True)
    room = await admin.create_room()
    for body in ({"block": "yes"}, {"new_room_user_id": admin.user_id}, {"purge": "yes"}):
        status, out = await admin.request("DELETE", A1 + f"/rooms/{quote(room)}", json=body)
        assert status == 400, out
    assert (await admin.request("GET", A1 + f"/rooms/{quote(room)}"))[0] == 200
