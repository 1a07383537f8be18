"""Endpoints clients call for one purpose each: TURN credentials, third-party protocols,
the support contacts, jumping to a date in a room, and the rooms two users share."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.config import ConfigError, config_from_dict
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

MakeUser = Callable[[str], Awaitable[RawClient]]
V1 = "/_matrix/client/v1"


async def test_turn_server_credentials(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    # No TURN server configured: an empty answer, as Synapse's.
    assert await alice.ok("GET", "/voip/turnServer") == {}
    voip = server.hs.config.voip
    voip.turn_uris = ["turn:turn.example.org?transport=udp", "turns:turn.example.org:5349"]
    voip.turn_shared_secret = "coturn-secret"
    voip.turn_user_lifetime_ms = 3_600_000
    before = server.hs.clock.time_ms() // 1000
    creds = await alice.ok("GET", "/voip/turnServer")
    assert creds["uris"] == voip.turn_uris and creds["ttl"] == 3600
    expiry, _, user = creds["username"].partition(":")
    assert user == alice.user_id and before + 3600 <= int(expiry) <= before + 3601
    # What coturn's use-auth-secret checks: base64(HMAC-SHA1(secret, username)).
    mac = hmac.new(b"coturn-secret", creds["username"].encode(), hashlib.sha1).digest()
    assert creds["password"] == base64.b64encode(mac).decode()
    voip.turn_shared_secret = None
    voip.turn_username, voip.turn_password = "fixed", "pass"
    creds = await alice.ok("GET", "/voip/turnServer")
    assert (creds["username"], creds["password"]) == ("fixed", "pass")
    status, body = await RawClient(alice.session, server.base_url).request("GET", "/voip/turnServer")
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"


def test_voip_and_support_config_is_checked() -> None:
    base = {"server_name": "example.org"}
    with pytest.raises(ConfigError, match="not both"):
        config_from_dict({**base, "voip": {"turn_shared_secret": "s", "turn_password": "p"}})
    with pytest.raises(ConfigError, match="turn_uris"):
        config_from_dict({**base, "voip": {"turn_uris": "turn:x"}})
    with pytest.raises(ConfigError, match="matrix_id or an email_address"):
        config_from_dict({**base, "support": {"contacts": [{"role": "m.role.admin"}]}})


async def test_no_third_party_protocols(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    assert await alice.ok("GET", "/thirdparty/protocols") == {}
    for path in ("/thirdparty/protocol/irc", "/thirdparty/location/irc", "/thirdparty/user/irc"):
        status, body = await alice.request("GET", path)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND", path
    assert await alice.ok("GET", "/thirdparty/location", params={"alias": "#a:example.org"}) == []
    assert await alice.ok("GET", "/thirdparty/user", params={"userid": "@a:example.org"}) == []


async def test_support_contacts(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    status, body = await alice.request("GET", "/.well-known/matrix/support")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    support = server.hs.config.support
    support.contacts = [{"role": "m.role.admin", "matrix_id": alice.user_id}]
    support.support_page = "https://example.org/help"
    body = await alice.ok("GET", "/.well-known/matrix/support")
    assert body == {"contacts": support.contacts, "support_page": "https://example.org/help"}


async def test_timestamp_to_event_within_the_readable_history(
    server: RunningServer, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="private_chat")
    sent = []
    for i in range(3):
        event_id = await alice.send(room, f"m{i}", f"t{i}")
        event = await alice.ok("GET", f"/rooms/{quote(room)}/event/{quote(event_id)}")
        sent.append((event_id, event["origin_server_ts"]))
        await asyncio.sleep(0.01)
    path = f"{V1}/rooms/{quote(room)}/timestamp_to_event"

    async def near(ts: int, direction: str) -> tuple[int, dict[str, object]]:
        return await alice.request("GET", path, params={"ts": str(ts), "dir": direction})

    (first, _), (second, t1), (third, t2) = sent
    assert await near(t1, "f") == (200, {"event_id": second, "origin_server_ts": t1})
    assert await near(t1, "b") == (200, {"event_id": second, "origin_server_ts": t1})
    assert (await near(t1 + 1, "f"))[1]["event_id"] == third
    assert (await near(t1 + 1, "b"))[1]["event_id"] == second
    assert (await near(t2 + 60_000, "b"))[1]["event_id"] == third
    status, body = await near(t2 + 60_000, "f")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await near(0, "b")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    # The room's creation comes before the messages.
    status, body = await near(0, "f")
    assert status == 200 and body["event_id"] not in (first, second, third)
    for params, errcode in (
        ({"dir": "f"}, "M_MISSING_PARAM"),
        ({"ts": "1"}, "M_MISSING_PARAM"),
        ({"ts": "soon", "dir": "f"}, "M_INVALID_PARAM"),
        ({"ts": "1", "dir": "up"}, "M_INVALID_PARAM"),
    ):
        status, body = await alice.request("GET", path, params=params)
        assert status == 400 and body["errcode"] == errcode, params
    # Someone who cannot read the room learns nothing about its events.
    status, body = await bob.request("GET", path, params={"ts": str(t1), "dir": "f"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"


async def test_mutual_rooms(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    shared = sorted([await alice.create_room(preset="public_chat") for _ in range(2)])
    await alice.create_room(preset="public_chat")  # alice's alone
    for room in shared:
        assert (await bob.join(room))[0] == 200
    path = f"{V1}/mutual_rooms"
    assert await alice.ok("GET", path, params={"user_id": bob.user_id}) == {"joined": shared}
    assert await bob.ok("POST", f"/rooms/{quote(shared[1])}/leave", json={}) == {}
    assert await alice.ok("GET", path, params={"user_id": bob.user_id}) == {"joined": shared[:1]}
    # A user nobody knows shares nothing.
    assert await alice.ok("GET", path, params={"user_id": "@nobody:example.org"}) == {"joined": []}
    for params in (
        {},
        {"user_id": "not-a-user"},
        {"user_id": alice.user_id},
        {"user_id": bob.user_id, "from": "x"},
    ):
        status, body = await alice.request("GET", path, params=params)
        assert status == 400 and body["errcode"] in ("M_MISSING_PARAM", "M_INVALID_PARAM"), params


async def test_the_deprecated_event_lookup_without_a_room(make_user: MakeUser) -> None:
    """GET /events/{eventId}: the event as /rooms/{roomId}/event/{eventId} gives it, for
    those who may read it; a 404 alike for the unknown and the unreadable."""
    alice = await make_user("alice")
    outsider = await make_user("outsider")
    room = await alice.create_room(preset="private_chat")
    event_id = await alice.send(room, "hello", "t1")
    by_room = await alice.ok("GET", f"/rooms/{quote(room)}/event/{quote(event_id)}")
    alone = await alice.ok("GET", f"/events/{quote(event_id)}")
    assert {k: v for k, v in alone.items() if k != "unsigned"} == {
        k: v for k, v in by_room.items() if k != "unsigned"
    }
    for who, wanted in ((outsider, event_id), (alice, "$nosuchevent")):
        status, body = await who.request("GET", f"/events/{quote(wanted)}")
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body


async def test_rtc_transports_for_element_call(tmp_path: object) -> None:
    livekit = {"type": "livekit", "livekit_service_url": "https://livekit-jwt.example.org"}
    async with (
        run_server(str(tmp_path), rtc={"transports": [livekit]}) as srv,
        aiohttp.ClientSession() as http,
    ):
        anonymous = RawClient(http, srv.base_url)
        well_known = await anonymous.ok("GET", "/.well-known/matrix/client")
        assert well_known["org.matrix.msc4143.rtc_foci"] == [livekit]
        path = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports"
        assert (await anonymous.request("GET", path))[0] == 401
        user_id = await srv.register("caller")
        token, _ = await srv.hs.auth.create_session(user_id, None, None)
        assert await RawClient(http, srv.base_url, token, user_id).ok("GET", path) == {
            "rtc_transports": [livekit]
        }
    with pytest.raises(ConfigError, match=r"rtc\.transports"):
        config_from_dict({"server_name": "example.org", "rtc": {"transports": [{"url": "x"}]}})


async def test_no_rtc_transports_by_default(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    assert "org.matrix.msc4143.rtc_foci" not in await alice.ok("GET", "/.well-known/matrix/client")
    path = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports"
    assert await alice.ok("GET", path) == {"rtc_transports": []}
