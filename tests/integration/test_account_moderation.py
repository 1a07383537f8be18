"""Account locking and suspension (spec 1.12, 1.13, 1.18): the admin endpoints and what a
locked or suspended account may still do, over HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

import aiohttp
import pytest

from tests.support.http import RawClient
from tests.support.server import RunningServer

MakeUser = Callable[[str], Awaitable[RawClient]]
ADMIN = "/_matrix/client/v1/admin"


@pytest.fixture
async def admin(server: RunningServer, http: aiohttp.ClientSession) -> RawClient:
    user_id = await server.register("root", admin=True)
    token, _ = await server.hs.auth.create_session(user_id, None, None)
    return RawClient(http, server.base_url, token, user_id)


async def set_flag(admin: RawClient, action: str, user_id: str, value: bool) -> None:
    flag = {"lock": "locked", "suspend": "suspended"}[action]
    assert await admin.ok("PUT", f"{ADMIN}/{action}/{quote(user_id)}", json={flag: value}) == {flag: value}
    assert await admin.ok("GET", f"{ADMIN}/{action}/{quote(user_id)}") == {flag: value}


@pytest.mark.parametrize("action", ["lock", "suspend"])
async def test_only_admins_moderate_and_only_local_active_accounts(
    server: RunningServer, make_user: MakeUser, admin: RawClient, action: str
) -> None:
    alice = await make_user("alice")
    flag = {"lock": "locked", "suspend": "suspended"}[action]
    path = f"{ADMIN}/{action}/{quote(alice.user_id)}"
    assert await admin.ok("GET", path) == {flag: False}
    # A non-admin is refused before any lookup: the same answer for a missing account.
    for target in (alice.user_id, f"@nobody:{server.server_name}"):
        for method, body in (("GET", None), ("PUT", {flag: True})):
            status, out = await alice.request(method, f"{ADMIN}/{action}/{quote(target)}", json=body)
            assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    status, out = await admin.request("GET", f"{ADMIN}/{action}/{quote('@bob:elsewhere.example')}")
    assert (status, out["errcode"]) == (400, "M_INVALID_PARAM")
    status, out = await admin.request(
        "PUT", f"{ADMIN}/{action}/{quote('@nobody:' + server.server_name)}", json={flag: True}
    )
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")
    for bad, code in (({}, "M_MISSING_PARAM"), ({flag: "yes"}, "M_BAD_JSON")):
        status, out = await admin.request("PUT", path, json=bad)
        assert (status, out["errcode"]) == (400, code)
    carol = await make_user("carol")
    await server.hs.accounts.deactivate(carol.user_id)
    status, out = await admin.request("GET", f"{ADMIN}/{action}/{quote(carol.user_id)}")
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")
    assert await admin.ok("GET", path) == {flag: False}  # nothing above changed alice


async def test_a_locked_account_can_only_log_out_and_keeps_its_sessions(
    server: RunningServer, make_user: MakeUser, admin: RawClient, http: aiohttp.ClientSession
) -> None:
    alice = await make_user("alice")  # password "password"
    token, _ = await server.hs.auth.create_session(alice.user_id, None, None)
    second = RawClient(http, server.base_url, token, alice.user_id)
    room = await alice.create_room()
    await set_flag(admin, "lock", alice.user_id, True)
    for method, path in (
        ("GET", "/sync"),
        ("GET", "/account/whoami"),
        ("PUT", f"/rooms/{room}/send/m.room.message/t1"),
    ):
        status, out = await alice.request(method, path, json={"msgtype": "m.text", "body": "x"})
        assert status == 401 and out["errcode"] == "M_USER_LOCKED" and out["soft_logout"] is True, (path, out)
    # No new access token either, once the password is right (a wrong one says only that).
    login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}}
    anonymous = RawClient(http, server.base_url)
    status, out = await anonymous.request("POST", "/login", json={**login, "password": "wrong"})
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    status, out = await anonymous.request("POST", "/login", json={**login, "password": "password"})
    assert status == 401 and out["errcode"] == "M_USER_LOCKED" and out["soft_logout"] is True
    assert await second.ok("POST", "/logout", json={}) == {}
    # Unlocked: the sessions it kept work again, and it can log in.
    await set_flag(admin, "lock", alice.user_id, False)
    assert (await alice.ok("GET", "/account/whoami"))["user_id"] == alice.user_id
    await alice.send(room, "back", "t2")
    assert (await anonymous.request("POST", "/login", json={**login, "password": "password"}))[0] == 200
    status, _ = await second.request("GET", "/account/whoami")
    assert status == 401  # logged out while locked, for good


async def test_a_suspended_account_reads_and_leaves_but_does_not_take_part(
    server: RunningServer, make_user: MakeUser, admin: RawClient
) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await bob.create_room(preset="public_chat")
    other = await bob.create_room(preset="public_chat")
    assert (await alice.join(room))[0] == 200
    mine = await alice.send(room, "mine", "m1")
    bobs = await bob.send(room, "bob's", "b1")
    await set_flag(admin, "suspend", alice.user_id, True)

    refused = [
        ("PUT", f"/rooms/{room}/send/m.room.message/t1", {"msgtype": "m.text", "body": "no"}),
        ("PUT", f"/rooms/{room}/send/m.room.redaction/t2", {"redacts": bobs}),
        ("PUT", f"/rooms/{room}/state/m.room.topic/", {"topic": "no"}),
        ("PUT", f"/rooms/{room}/redact/{quote(bobs)}/t3", {}),
        ("POST", f"/join/{quote(other)}", {}),
        ("POST", f"/rooms/{other}/join", {}),
        ("POST", f"/rooms/{room}/invite", {"user_id": f"@carol:{server.server_name}"}),
        ("POST", f"/rooms/{room}/kick", {"user_id": bob.user_id}),
        ("POST", "/createRoom", {}),
        ("PUT", f"/profile/{quote(alice.user_id)}/displayname", {"displayname": "no"}),
        ("POST", f"/rooms/{room}/upgrade", {"new_version": "11"}),
    ]
    for method, path, body in refused:
        status, out = await alice.request(method, path, json=body)
        assert (status, out.get("errcode")) == (403, "M_USER_SUSPENDED"), (method, path, out)

    # Reading, redacting its own events and leaving still work.
    assert any(
        e["event_id"] == bobs for e in (await alice.sync())["rooms"]["join"][room]["timeline"]["events"]
    )
    await alice.ok("GET", f"/rooms/{room}/messages", params={"dir": "b"})
    await alice.ok("PUT", f"/rooms/{room}/redact/{quote(mine)}/r1", json={})
    await alice.ok("POST", f"/rooms/{room}/leave", json={})
    # Nothing refused above reached the room.
    page = await bob.ok("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "50"})
    assert not [
        e
        for e in page["chunk"]
        if e["sender"] == alice.user_id and e["type"] == "m.room.message" and e["content"]
    ]
    assert (await bob.ok("GET", f"/profile/{quote(alice.user_id)}")).get("displayname") != "no"

    await set_flag(admin, "suspend", alice.user_id, False)
    assert (await alice.join(room))[0] == 200
    await alice.send(room, "back", "t4")


async def test_capabilities_offer_moderation_to_admins_only(make_user: MakeUser, admin: RawClient) -> None:
    alice = await make_user("alice")
    caps = (await admin.ok("GET", "/capabilities"))["capabilities"]
    assert caps["m.account_moderation"] == {"lock": True, "suspend": True}
    assert "m.account_moderation" not in (await alice.ok("GET", "/capabilities"))["capabilities"]


async def test_whois_for_admins_and_the_user_themself(
    server: RunningServer, make_user: MakeUser, admin: RawClient
) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    await alice.ok("GET", "/account/whoami")
    path = f"/admin/whois/{quote(alice.user_id)}"
    for who in (admin, alice):
        out = await who.ok("GET", path)
        assert out["user_id"] == alice.user_id
        [device] = out["devices"].values()
        [session] = device["sessions"]
        assert all(set(c) <= {"ip", "last_seen", "user_agent"} for c in session["connections"])
    status, out = await bob.request("GET", path)
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    # The same under Synapse's admin prefix.
    synapse_path = f"{admin.base_url}/_synapse/admin/v1/whois/{quote(alice.user_id)}"
    async with admin.session.get(synapse_path, headers={"Authorization": f"Bearer {admin.token}"}) as resp:
        assert resp.status == 200 and await resp.json() == await admin.ok("GET", path)
    status, out = await admin.request("GET", f"/admin/whois/{quote('@nobody:' + server.server_name)}")
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")
