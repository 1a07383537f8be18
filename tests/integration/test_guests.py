"""Guest accounts (the spec's guest access module), over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

GUESTS_JOIN = [{"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}]


async def register_guest(srv: RunningServer, http: aiohttp.ClientSession) -> RawClient:
    anonymous = RawClient(http, srv.base_url)
    out = await anonymous.ok("POST", "/register?kind=guest", json={"initial_device_display_name": "web"})
    assert out["user_id"].split(":")[0][1:].isdigit() and "refresh_token" not in out
    return RawClient(http, srv.base_url, out["access_token"], out["user_id"])


async def test_guest_registration_is_off_by_default(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    status, out = await RawClient(http, server.base_url).request("POST", "/register?kind=guest", json={})
    assert (status, out["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")


async def test_a_guest_reads_and_talks_where_guests_may_join(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # Guests are allowed even with registration of full accounts closed.
    overrides = {"registration": {"allow_guests": True, "enabled": False}}
    async with run_server(str(tmp_path), **overrides) as srv:
        alice_id = await srv.register("alice")
        token, _ = await srv.hs.auth.create_session(alice_id, None, None)
        alice = RawClient(http, srv.base_url, token, alice_id)
        open_room = await alice.create_room(preset="public_chat", initial_state=GUESTS_JOIN)
        closed_room = await alice.create_room(preset="public_chat")
        await alice.send(open_room, "hello guests", "a1")

        guest = await register_guest(srv, http)
        assert (await guest.ok("GET", "/account/whoami"))["is_guest"] is True
        assert (await guest.join(open_room))[0] == 200
        page = await guest.ok("GET", f"/rooms/{open_room}/messages", params={"dir": "b"})
        assert any(e["content"].get("body") == "hello guests" for e in page["chunk"])
        await guest.send(open_room, "hi from a guest", "g1")
        assert open_room in (await guest.sync())["rooms"]["join"]
        me = quote(guest.user_id)
        await guest.ok("PUT", f"/profile/{me}/displayname", json={"displayname": "Visitor"})

        status, out = await guest.join(closed_room)
        assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
        for method, path, body in (
            ("POST", "/createRoom", {}),
            ("PUT", f"/profile/{me}/avatar_url", {"avatar_url": "mxc://x/y"}),
            ("PUT", f"/rooms/{open_room}/typing/{me}", {"typing": True, "timeout": 1000}),
            ("GET", "/joined_rooms", None),
        ):
            status, out = await guest.request(method, path, json=body)
            assert (status, out["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN"), (method, path)

        # Turning guest access off makes the guest leave.
        await alice.ok(
            "PUT", f"/rooms/{open_room}/state/m.room.guest_access/", json={"guest_access": "forbidden"}
        )
        for _ in range(50):
            membership = await srv.hs.events.get_membership(open_room, guest.user_id)
            if membership is not None and membership[0] == "leave":
                break
            await asyncio.sleep(0.05)
        assert membership is not None and membership[0] == "leave"
        assert (await guest.join(open_room))[0] == 403


async def _register(client: RawClient, body: Mapping[str, Any]) -> tuple[int, Any]:
    """POST /register through the dummy stage (one request, or two when UIA asks)."""
    status, out = await client.request("POST", "/register", json=body)
    if status == 401:
        auth = {"type": "m.login.dummy", "session": out["session"]}
        status, out = await client.request("POST", "/register", json={**body, "auth": auth})
    return status, out


async def test_a_guest_upgrades_to_a_full_account(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_server(str(tmp_path), registration={"allow_guests": True}) as srv:
        guest = await register_guest(srv, http)
        alice_id = await srv.register("alice")
        token, _ = await srv.hs.auth.create_session(alice_id, None, None)
        alice = RawClient(http, srv.base_url, token, alice_id)
        room = await alice.create_room(preset="public_chat", initial_state=GUESTS_JOIN)
        assert (await guest.join(room))[0] == 200
        localpart = guest.user_id.split(":")[0][1:]
        anonymous = RawClient(http, srv.base_url)

        # Another user's name, a missing name, or a token that is not a guest's: refused.
        for body, expected in (
            ({"username": "alice", "password": "pw-upgrade-1", "guest_access_token": guest.token}, 403),
            ({"password": "pw-upgrade-1", "guest_access_token": guest.token}, 400),
            ({"username": localpart, "password": "pw-upgrade-1", "guest_access_token": "nope"}, 403),
            ({"username": "alice", "password": "pw-upgrade-1", "guest_access_token": token}, 403),
        ):
            status, out = await _register(anonymous, body)
            assert status == expected, (body, out)
        # Without the guest's token its name is taken; numeric names are kept for guests.
        status, out = await _register(anonymous, {"username": localpart, "password": "pw-upgrade-1"})
        assert (status, out["errcode"]) == (400, "M_INVALID_USERNAME")
        status, out = await _register(anonymous, {"username": "12345", "password": "pw-upgrade-1"})
        assert (status, out["errcode"]) == (400, "M_INVALID_USERNAME")

        body = {"username": localpart, "password": "pw-upgrade-1", "guest_access_token": guest.token}
        status, out = await _register(anonymous, body)
        assert status == 200, out
        assert out["user_id"] == guest.user_id
        full = RawClient(http, srv.base_url, str(out["access_token"]), guest.user_id)
        assert (await full.ok("GET", "/account/whoami"))["is_guest"] is False
        # The guest's own token now speaks for the full account too, and the rooms stay.
        assert (await guest.ok("GET", "/account/whoami"))["is_guest"] is False
        assert room in (await full.ok("GET", "/joined_rooms"))["joined_rooms"]
        # The new password logs in; the upgrade cannot be repeated.
        login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}}
        status, _ = await anonymous.request("POST", "/login", json={**login, "password": "pw-upgrade-1"})
        assert status == 200
        status, out = await _register(anonymous, body)
        assert status == 403, out
