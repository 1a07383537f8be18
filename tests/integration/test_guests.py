"""Guest accounts (the spec's guest access module), over HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
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
