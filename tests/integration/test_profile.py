"""Profiles over real HTTP, with raw requests, matrix-nio and mautrix."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import pytest
from mautrix.api import HTTPAPI, Method, Path
from mautrix.client import ClientAPI
from mautrix.errors import MForbidden
from mautrix.types import ContentURI, UserID
from nio import (
    AsyncClient,
    ProfileGetAvatarResponse,
    ProfileGetDisplayNameResponse,
    ProfileGetResponse,
    ProfileSetDisplayNameResponse,
)

from tests.support.http import RawClient
from tests.support.server import RunningServer


async def user(http: aiohttp.ClientSession, server: RunningServer, localpart: str) -> RawClient:
    body = await server.login(localpart)
    return RawClient(http, server.base_url, body["access_token"], body["user_id"])


async def test_profile_get_set_raw(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await user(http, server, "alice")
    uid = quote(alice.user_id)
    # A new account's display name is its localpart; there is no avatar yet.
    assert await alice.ok("GET", f"/profile/{uid}") == {"displayname": "alice"}
    status, body = await alice.request("GET", f"/profile/{uid}/avatar_url")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

    assert await alice.ok("PUT", f"/profile/{uid}/displayname", json={"displayname": "Alice A."}) == {}
    assert await alice.ok("PUT", f"/profile/{uid}/avatar_url", json={"avatar_url": "mxc://x/y"}) == {}
    assert await alice.ok("GET", f"/profile/{uid}") == {"displayname": "Alice A.", "avatar_url": "mxc://x/y"}
    # Reading needs no access token.
    anon = RawClient(http, server.base_url)
    assert await anon.ok("GET", f"/profile/{uid}/displayname") == {"displayname": "Alice A."}

    assert await alice.ok("DELETE", f"/profile/{uid}/avatar_url") == {}
    assert await alice.ok("GET", f"/profile/{uid}") == {"displayname": "Alice A."}


async def test_profile_errors(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await user(http, server, "alice")
    bob = await user(http, server, "bob")
    uid = quote(alice.user_id)
    status, body = await alice.request("GET", f"/profile/{quote('@nobody:' + server.server_name)}")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await alice.request("GET", f"/profile/{quote('@someone:remote.example')}/displayname")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await bob.request("PUT", f"/profile/{uid}/displayname", json={"displayname": "hacked"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await RawClient(http, server.base_url).request(
        "PUT", f"/profile/{uid}/displayname", json={"displayname": "x"}
    )
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    status, body = await alice.request("PUT", f"/profile/{uid}/displayname", json={"other": "x"})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
    status, body = await alice.request("PUT", f"/profile/{uid}/displayname", json={"displayname": 42})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, body = await alice.request("PUT", f"/profile/{uid}/avatar_url", json={"avatar_url": "http://x/y"})
    assert status == 400
    status, body = await alice.request("PUT", f"/profile/{uid}/displayname", json={"displayname": "x" * 300})
    assert status == 400
    status, body = await alice.request("PUT", f"/profile/{uid}/Not-A-Key", json={"Not-A-Key": 1})
    assert status == 400
    # Deleting a custom field that was never set is done already.
    assert await alice.ok("DELETE", f"/profile/{uid}/org.example.pet") == {}
    status, body = await bob.request("PUT", f"/profile/{uid}/org.example.pet", json={"org.example.pet": 1})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await alice.request("PUT", f"/profile/{uid}/{'k' * 300}", json={"k" * 300: 1})
    assert (status, body["errcode"]) == (400, "M_KEY_TOO_LARGE")


async def test_custom_profile_fields(server: RunningServer, http: aiohttp.ClientSession) -> None:
    """Spec v1.16: any field beside the display name and avatar, any JSON value, the whole
    profile under 64 KiB; not in member events."""
    alice = await user(http, server, "alice")
    bob = await user(http, server, "bob")
    uid = quote(alice.user_id)
    room = await alice.create_room(preset="public_chat")
    assert await alice.ok("PUT", f"/profile/{uid}/displayname", json={"displayname": "Alice"}) == {}
    assert await alice.ok("PUT", f"/profile/{uid}/m.tz", json={"m.tz": "Europe/Paris"}) == {}
    pet = {"kind": "cat", "names": ["Tom", None], "age": 3}
    assert await alice.ok("PUT", f"/profile/{uid}/org.example.pet", json={"org.example.pet": pet}) == {}
    assert await bob.ok("GET", f"/profile/{uid}/org.example.pet") == {"org.example.pet": pet}
    assert await bob.ok("GET", f"/profile/{uid}") == {
        "displayname": "Alice",
        "m.tz": "Europe/Paris",
        "org.example.pet": pet,
    }
    assert (await bob.join(room))[0] == 200
    member = await bob.ok("GET", f"/rooms/{quote(room)}/state/m.room.member/{uid}")
    assert "m.tz" not in member and member["displayname"] == "Alice"
    # Replaced, then deleted.
    assert await alice.ok("PUT", f"/profile/{uid}/m.tz", json={"m.tz": "UTC"}) == {}
    assert (await bob.ok("GET", f"/profile/{uid}/m.tz")) == {"m.tz": "UTC"}
    assert await alice.ok("DELETE", f"/profile/{uid}/m.tz") == {}
    status, body = await bob.request("GET", f"/profile/{uid}/m.tz")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    # Too large, as a whole: refused, and nothing stored.
    status, body = await alice.request(
        "PUT", f"/profile/{uid}/org.example.big", json={"org.example.big": "x" * 70_000}
    )
    assert (status, body["errcode"]) == (400, "M_PROFILE_TOO_LARGE")
    assert "org.example.big" not in await bob.ok("GET", f"/profile/{uid}")
    # Deactivated with erase: all of it goes.
    await server.hs.accounts.erase_profile(alice.user_id)
    assert await bob.ok("GET", f"/profile/{uid}") == {}


async def test_profile_change_updates_member_events(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await user(http, server, "alice")
    bob = await user(http, server, "bob")
    room_id = await alice.create_room(preset="public_chat")
    other_room = await bob.create_room(preset="public_chat")
    status, _ = await alice.join(other_room)
    assert status == 200
    uid = quote(alice.user_id)
    await alice.ok("PUT", f"/profile/{uid}/displayname", json={"displayname": "New Name"})
    await alice.ok("PUT", f"/profile/{uid}/avatar_url", json={"avatar_url": "mxc://x/avatar"})
    for rid in (room_id, other_room):
        member = await alice.ok("GET", f"/rooms/{quote(rid)}/state/m.room.member/{uid}")
        assert member == {"membership": "join", "displayname": "New Name", "avatar_url": "mxc://x/avatar"}
    await alice.ok("DELETE", f"/profile/{uid}/avatar_url")
    member = await alice.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.member/{uid}")
    assert member == {"membership": "join", "displayname": "New Name"}
    # Setting the same value again sends no new event.
    before = await server.hs.events.get_membership(room_id, alice.user_id)
    await alice.ok("PUT", f"/profile/{uid}/displayname", json={"displayname": "New Name"})
    assert await server.hs.events.get_membership(room_id, alice.user_id) == before


async def test_nio_profile(server: RunningServer) -> None:
    await server.register("niouser", "pw")
    client = AsyncClient(server.base_url, "niouser")
    try:
        await client.login("pw")
        resp = await client.set_displayname("Nio User")
        assert isinstance(resp, ProfileSetDisplayNameResponse), resp
        name = await client.get_displayname()
        assert isinstance(name, ProfileGetDisplayNameResponse) and name.displayname == "Nio User"
        await client.set_avatar("mxc://example/nio")
        avatar = await client.get_avatar()
        assert isinstance(avatar, ProfileGetAvatarResponse) and avatar.avatar_url == "mxc://example/nio"
        profile = await client.get_profile()
        assert isinstance(profile, ProfileGetResponse)
        assert (profile.displayname, profile.avatar_url) == ("Nio User", "mxc://example/nio")
    finally:
        await client.close()


async def test_mautrix_profile(server: RunningServer) -> None:
    await server.register("mau", "pw")
    await server.register("other", "pw")
    async with aiohttp.ClientSession() as session:
        api = HTTPAPI(server.base_url, client_session=session)
        client = ClientAPI(api=api)
        resp = await client.login(identifier=UserID("mau"), password="pw", device_name="mautrix")
        assert resp.user_id == f"@mau:{server.server_name}"
        client.mxid = resp.user_id
        await client.set_displayname("Mau Trix")
        await client.set_avatar_url(ContentURI("mxc://example/mau"))
        profile = await client.get_profile(resp.user_id)
        assert (profile.displayname, profile.avatar_url) == ("Mau Trix", "mxc://example/mau")
        # mautrix clears an avatar with null.
        await client.set_avatar_url(None)
        assert await client.get_avatar_url(resp.user_id) is None
        assert await client.get_displayname(UserID(f"@missing:{server.server_name}")) is None
        other = UserID(f"@other:{server.server_name}")
        with pytest.raises(MForbidden):
            await client.api.request(Method.PUT, Path.v3.profile[other].displayname, {"displayname": "x"})
