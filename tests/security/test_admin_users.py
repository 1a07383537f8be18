"""Creating and changing accounts through the admin API (PUT /_synapse/admin/v2/users/...,
the admin flag, joined rooms)."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from tests.security.test_admin_api import A1, A2, login_status, user
from tests.support.server import RunningServer


async def test_create_then_change_an_account(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    new_id = f"@newbie:{server.server_name}"
    url = f"{A2}/users/{quote(new_id)}"
    status, created = await admin.request(
        "PUT", url, json={"password": "first-pass", "displayname": "New Bie"}
    )
    assert status == 201, created
    assert (created["name"], created["displayname"], created["admin"]) == (new_id, "New Bie", False)
    assert await login_status(server, http, "newbie", "first-pass") == 200
    status, again = await admin.request("PUT", url, json={})
    assert status == 200 and again["name"] == new_id

    # The display name reaches the rooms the user is in.
    token, _ = await server.hs.auth.create_session(new_id, None, None)
    room = await alice.create_room(preset="public_chat")
    async with http.post(
        f"{server.base_url}/_matrix/client/v3/join/{quote(room)}",
        headers={"Authorization": f"Bearer {token}"},
        json={},
    ) as resp:
        assert resp.status == 200
    changed = await admin.ok(
        "PUT", url, json={"displayname": "Renamed", "avatar_url": "mxc://example.org/abc"}
    )
    assert (changed["displayname"], changed["avatar_url"]) == ("Renamed", "mxc://example.org/abc")
    member = await alice.ok("GET", f"/rooms/{quote(room)}/state/m.room.member/{quote(new_id)}")
    assert member["displayname"] == "Renamed"

    # A new password ends the sessions, unless told not to.
    await admin.ok("PUT", url, json={"password": "second-pass", "logout_devices": False})
    async with http.get(
        f"{server.base_url}/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200
    await admin.ok("PUT", url, json={"password": "third-pass"})
    async with http.get(
        f"{server.base_url}/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 401
    assert await login_status(server, http, "newbie", "third-pass") == 200

    # Locked, then unlocked.
    assert (await admin.ok("PUT", url, json={"locked": True}))["locked"] is True
    fresh, _ = await server.hs.auth.create_session(new_id, None, None)
    async with http.get(
        f"{server.base_url}/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {fresh}"}
    ) as resp:
        assert resp.status == 401 and (await resp.json())["errcode"] == "M_USER_LOCKED"
    assert (await admin.ok("PUT", url, json={"locked": False}))["locked"] is False

    # Deactivated; reactivating needs a password.
    assert (await admin.ok("PUT", url, json={"deactivated": True}))["deactivated"] is True
    assert await login_status(server, http, "newbie", "third-pass") == 403
    status, out = await admin.request("PUT", url, json={"displayname": "ghost"})
    assert (status, out["errcode"]) == (400, "M_USER_DEACTIVATED")
    status, out = await admin.request("PUT", url, json={"deactivated": False})
    assert (status, out["errcode"]) == (400, "M_MISSING_PARAM")
    back = await admin.ok("PUT", url, json={"deactivated": False, "password": "fourth-pass"})
    assert back["deactivated"] is False
    assert await login_status(server, http, "newbie", "fourth-pass") == 200


async def test_the_admin_flag_and_joined_rooms(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    bob = await user(server, http, "bob")
    room = await bob.create_room()
    flag = f"{A1}/users/{quote(bob.user_id)}/admin"
    assert await admin.ok("GET", flag) == {"admin": False}
    status, _ = await bob.request("GET", f"{A1}/server_version")
    assert status == 403
    assert await admin.ok("PUT", flag, json={"admin": True}) == {}
    assert await admin.ok("GET", flag) == {"admin": True}
    # At once, with the token bob already has.
    assert (await bob.ok("GET", f"{A1}/users/{quote(bob.user_id)}/joined_rooms")) == {
        "joined_rooms": [room],
        "total": 1,
    }
    status, out = await admin.request(
        "PUT", f"{A1}/users/{quote(admin.user_id)}/admin", json={"admin": False}
    )
    assert (status, out["errcode"]) == (400, "M_INVALID_PARAM")
    nobody = quote(f"@nobody:{server.server_name}")
    for method, path, body in (
        ("GET", f"{A1}/users/{nobody}/admin", None),
        ("PUT", f"{A1}/users/{nobody}/admin", {"admin": True}),
        ("GET", f"{A1}/users/{nobody}/joined_rooms", None),
    ):
        status, out = await admin.request(method, path, json=body)
        assert (status, out["errcode"]) == (404, "M_NOT_FOUND"), path
    assert await server.hs.accounts.get_user(f"@nobody:{server.server_name}") is None


async def test_bad_requests(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    cases = [
        ("@remote:elsewhere.example", {}, "M_INVALID_PARAM"),
        (f"@Upper:{server.server_name}", {}, "M_INVALID_USERNAME"),
        (f"@x:{server.server_name}", {"admin": "yes"}, "M_BAD_JSON"),
        (f"@x:{server.server_name}", {"password": 5}, "M_BAD_JSON"),
        (
            f"@x:{server.server_name}",
            {"threepids": [{"medium": "email", "address": "a@b.c"}]},
            "M_INVALID_PARAM",
        ),
        (f"@x:{server.server_name}", {"user_type": "robot"}, "M_INVALID_PARAM"),
        (f"@x:{server.server_name}", {"deactivated": True}, "M_INVALID_PARAM"),
    ]
    for user_id, body, errcode in cases:
        status, out = await admin.request("PUT", f"{A2}/users/{quote(user_id)}", json=body)
        assert (status, out["errcode"]) == (400, errcode), (user_id, body, out)
    assert await server.hs.accounts.get_user(f"@x:{server.server_name}") is None


async def test_a_users_devices(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    first = await server.login("dora")
    second = await server.login("dora")
    dora = first["user_id"]
    devices = f"{A2}/users/{quote(dora)}/devices"
    listed = await admin.ok("GET", devices)
    assert listed["total"] == 2
    assert {d["device_id"] for d in listed["devices"]} == {first["device_id"], second["device_id"]}
    one = f"{devices}/{quote(first['device_id'])}"
    assert await admin.ok("PUT", one, json={"display_name": "Dora's phone"}) == {}
    assert (await admin.ok("GET", one))["display_name"] == "Dora's phone"

    async def whoami(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{server.base_url}/_matrix/client/v3/account/whoami", headers=headers) as resp:
            return resp.status

    assert await admin.ok("DELETE", one) == {}
    assert (await whoami(first["access_token"]), await whoami(second["access_token"])) == (401, 200)
    assert (
        await admin.ok(
            "POST", f"{A2}/users/{quote(dora)}/delete_devices", json={"devices": [second["device_id"]]}
        )
        == {}
    )
    assert await whoami(second["access_token"]) == 401
    assert (await admin.ok("GET", devices))["total"] == 0
    for method, path, body, status, errcode in (
        ("GET", one, None, 404, "M_NOT_FOUND"),
        ("PUT", one, {"display_name": "x"}, 404, "M_NOT_FOUND"),
        ("PUT", one, {}, 404, "M_NOT_FOUND"),
        ("POST", f"{A2}/users/{quote(dora)}/delete_devices", {"devices": "all"}, 400, "M_BAD_JSON"),
        ("GET", f"{A2}/users/{quote('@nobody:' + server.server_name)}/devices", None, 404, "M_NOT_FOUND"),
        ("GET", f"{A2}/users/{quote('@x:elsewhere.example')}/devices", None, 400, "M_INVALID_PARAM"),
    ):
        got, out = await admin.request(method, path, json=body)
        assert (got, out["errcode"]) == (status, errcode), (method, path, out)


async def test_putting_a_user_in_a_room(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    owner = await user(server, http, "owner")
    erin = await user(server, http, "erin")
    public = await owner.create_room(preset="public_chat", room_alias_name="lobby")
    private = await owner.create_room(preset="private_chat")
    body = {"user_id": erin.user_id}
    # Public: by alias, without the admin in it.
    out = await admin.ok("POST", f"{A1}/join/{quote('#lobby:' + server.server_name)}", json=body)
    assert out == {"room_id": public}
    assert public in (await erin.ok("GET", "/joined_rooms"))["joined_rooms"]
    # Private: only through an admin who is in the room and may invite.
    status, out = await admin.request("POST", f"{A1}/join/{quote(private)}", json=body)
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    await owner.ok("POST", f"/rooms/{quote(private)}/invite", json={"user_id": admin.user_id})
    assert (await admin.join(private))[0] == 200
    assert await admin.ok("POST", f"{A1}/join/{quote(private)}", json=body) == {"room_id": private}
    assert private in (await erin.ok("GET", "/joined_rooms"))["joined_rooms"]
    for target, payload, status, errcode in (
        (public, {"user_id": f"@nobody:{server.server_name}"}, 404, "M_NOT_FOUND"),
        (public, {}, 400, "M_MISSING_PARAM"),
        (f"#missing:{server.server_name}", body, 404, "M_NOT_FOUND"),
    ):
        got, out = await admin.request("POST", f"{A1}/join/{quote(target)}", json=payload)
        assert (got, out["errcode"]) == (status, errcode), (target, payload, out)


async def test_a_users_pushers(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    carol = await user(server, http, "carol")
    pushers = f"{A1}/users/{quote(carol.user_id)}/pushers"
    assert await admin.ok("GET", pushers) == {"pushers": [], "total": 0}
    pusher = {
        "kind": "http",
        "app_id": "org.example.app",
        "pushkey": "carol-key",
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
    }
    await carol.ok("POST", "/pushers/set", json=pusher)
    listed = await admin.ok("GET", pushers)
    assert listed["total"] == 1
    assert {k: listed["pushers"][0][k] for k in pusher} == pusher
    # What the user sees of their own pushers, the admin sees too.
    assert listed["pushers"] == (await carol.ok("GET", "/pushers"))["pushers"]
    status, out = await carol.request("GET", pushers)
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    status, out = await admin.request("GET", f"{A1}/users/{quote(f'@nobody:{server.server_name}')}/pushers")
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")
