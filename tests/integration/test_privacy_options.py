"""Synapse's privacy options, off (their defaults) and on: who may read the room directory
(room_directory), whom the user directory finds (user_directory.search_all_users) and who
may read a profile (profiles). Federation's side: tests/federation/test_directory.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.config import ConfigError, config_from_dict, generate_config_yaml
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server


class MakeUser(Protocol):
    def __call__(self, localpart: str, admin: bool = False) -> Awaitable[RawClient]: ...


@asynccontextmanager
async def privacy_server(tmp_path: Any, **overrides: Any) -> AsyncIterator[tuple[RunningServer, MakeUser]]:
    async with run_server(str(tmp_path), **overrides) as srv, aiohttp.ClientSession() as http:

        async def make(localpart: str, admin: bool = False) -> RawClient:
            user_id = await srv.register(localpart, admin=admin)
            token, _ = await srv.hs.auth.create_session(user_id, None, None)
            return RawClient(http, srv.base_url, token, user_id)

        yield srv, make


def anonymous(user: RawClient) -> RawClient:
    return RawClient(user.session, user.base_url)


async def refused(client: RawClient, method: str, path: str, status: int, errcode: str, **kw: Any) -> None:
    got, body = await client.request(method, path, **kw)
    assert (got, body.get("errcode")) == (status, errcode), (method, path, got, body)


# Room directory --------------------------------------------------------------------------------


async def test_the_room_directory_needs_a_token_by_default(tmp_path: Any) -> None:
    async with privacy_server(tmp_path) as (_, make):
        alice = await make("alice")
        await alice.create_room(preset="public_chat", visibility="public", name="Lobby")
        nobody = anonymous(alice)
        await refused(nobody, "GET", "/publicRooms", 401, "M_MISSING_TOKEN")
        await refused(nobody, "GET", "/publicRooms", 401, "M_MISSING_TOKEN", params={"limit": "5"})
        await refused(nobody, "POST", "/publicRooms", 401, "M_MISSING_TOKEN", json={})
        bad = RawClient(alice.session, alice.base_url, "syt_not_a_token")
        await refused(bad, "GET", "/publicRooms", 401, "M_UNKNOWN_TOKEN")
        listed = await alice.ok("GET", "/publicRooms")
        assert [r["name"] for r in listed["chunk"]] == ["Lobby"]


async def test_the_room_directory_without_auth(tmp_path: Any) -> None:
    overrides = {"room_directory": {"allow_public_rooms_without_auth": True}}
    async with privacy_server(tmp_path, **overrides) as (srv, make):
        alice = await make("alice")
        await alice.create_room(preset="public_chat", visibility="public", name="Lobby")
        nobody = anonymous(alice)
        listed = await nobody.ok("GET", "/publicRooms")
        assert [r["name"] for r in listed["chunk"]] == ["Lobby"]
        assert (await nobody.ok("GET", "/publicRooms", params={"server": srv.server_name}))["chunk"]
        # A search (POST) and asking another server still need a token, as in Synapse.
        await refused(nobody, "POST", "/publicRooms", 401, "M_MISSING_TOKEN", json={})
        other = {"server": "elsewhere.example.org"}
        await refused(nobody, "GET", "/publicRooms", 401, "M_MISSING_TOKEN", params=other)


async def test_guests_read_the_room_directory(tmp_path: Any) -> None:
    async with privacy_server(tmp_path, registration={"allow_guests": True}) as (srv, make):
        alice = await make("alice")
        await alice.create_room(preset="public_chat", visibility="public", name="Lobby")
        guest = await anonymous(alice).ok("POST", "/register?kind=guest", json={})
        as_guest = RawClient(alice.session, alice.base_url, guest["access_token"])
        assert [r["name"] for r in (await as_guest.ok("GET", "/publicRooms"))["chunk"]] == ["Lobby"]
        # A search (POST) and naming a server take a guest's token too, as in Synapse.
        found = await as_guest.ok("POST", "/publicRooms", json={"filter": {"generic_search_term": "lob"}})
        assert [r["name"] for r in found["chunk"]] == ["Lobby"]
        mine = {"server": srv.server_name}
        for method, body in (("GET", None), ("POST", {})):
            listed = await as_guest.ok(method, "/publicRooms", json=body, params=mine)
            assert [r["name"] for r in listed["chunk"]] == ["Lobby"], method


# Profiles --------------------------------------------------------------------------------------


def profile_paths(user_id: str) -> list[str]:
    return [f"/profile/{quote(user_id)}", f"/profile/{quote(user_id)}/displayname"]


async def test_profiles_are_public_by_default(tmp_path: Any) -> None:
    async with privacy_server(tmp_path) as (_, make):
        bob = await make("bob")
        nobody = anonymous(bob)
        for path in profile_paths(bob.user_id):
            assert (await nobody.ok("GET", path))["displayname"] == "bob"


async def test_require_auth_for_profile_requests(tmp_path: Any) -> None:
    overrides = {"profiles": {"require_auth_for_profile_requests": True}}
    async with privacy_server(tmp_path, **overrides) as (_, make):
        bob, stranger = await make("bob"), await make("stranger")
        for path in profile_paths(bob.user_id):
            await refused(anonymous(bob), "GET", path, 401, "M_MISSING_TOKEN")
            # Any signed-in user, sharing a room or not.
            assert (await stranger.ok("GET", path))["displayname"] == "bob"


@pytest.mark.parametrize("with_auth_option", [True, False])
async def test_profiles_limited_to_users_who_share_rooms(tmp_path: Any, with_auth_option: bool) -> None:
    profiles = {"limit_profile_requests_to_users_who_share_rooms": True}
    if with_auth_option:
        profiles["require_auth_for_profile_requests"] = True
    async with privacy_server(tmp_path, profiles=profiles) as (srv, make):
        bob, carol, stranger = await make("bob"), await make("carol"), await make("stranger")
        room = await bob.create_room(preset="public_chat")
        assert (await carol.join(room))[0] == 200
        for path in profile_paths(bob.user_id):
            # Alone, the limit still needs to know who asks (in Synapse it would do nothing).
            await refused(anonymous(bob), "GET", path, 401, "M_MISSING_TOKEN")
            await refused(stranger, "GET", path, 403, "M_FORBIDDEN")
            assert (await carol.ok("GET", path))["displayname"] == "bob"
            assert (await bob.ok("GET", path))["displayname"] == "bob"  # one's own
        # A shared room counts while both are joined; an unknown user looks like a stranger.
        await carol.ok("POST", f"/rooms/{quote(room)}/leave", json={})
        await refused(carol, "GET", profile_paths(bob.user_id)[0], 403, "M_FORBIDDEN")
        assert (await stranger.join(room))[0] == 200
        assert (await stranger.ok("GET", profile_paths(bob.user_id)[0]))["displayname"] == "bob"
        await refused(stranger, "GET", f"/profile/@nobody:{srv.server_name}", 403, "M_FORBIDDEN")
        await refused(stranger, "GET", "/profile/@bad%00:" + srv.server_name, 400, "M_INVALID_PARAM")


@pytest.mark.parametrize("include", [True, False])
async def test_include_profile_data_on_invite(tmp_path: Any, include: bool) -> None:
    async with privacy_server(tmp_path, profiles={"include_profile_data_on_invite": include}) as (_, make):
        alice, bob, carol = await make("alice"), await make("bob"), await make("carol")
        avatar = {"avatar_url": "mxc://example.org/bob"}
        await bob.ok("PUT", f"/profile/{quote(bob.user_id)}/avatar_url", json=avatar)
        # Invited by /invite (with a reason) and by createRoom's invite list.
        room = await alice.create_room(preset="private_chat")
        await alice.ok("POST", f"/rooms/{quote(room)}/invite", json={"user_id": bob.user_id, "reason": "hi"})
        created = await alice.ok("POST", "/createRoom", json={"invite": [carol.user_id]})
        # And as a raw member event: a name the client sets stays.
        raw = await alice.create_room(preset="private_chat")
        member = {"membership": "invite", "displayname": "Bobby"}
        await alice.ok("PUT", f"/rooms/{quote(raw)}/state/m.room.member/{quote(bob.user_id)}", json=member)
        for where, user, expected in (
            (room, bob, {"displayname": "bob", **avatar, "reason": "hi"}),
            (created["room_id"], carol, {"displayname": "carol", "is_direct": False}),
        ):
            path = f"/rooms/{quote(where)}/state/m.room.member/{quote(user.user_id)}"
            content = await alice.ok("GET", path)
            profile = {k: v for k, v in expected.items() if k in ("displayname", "avatar_url")}
            others = {k: v for k, v in expected.items() if k not in profile}
            assert content == {"membership": "invite", **(profile if include else {}), **others}, content
        content = await alice.ok("GET", f"/rooms/{quote(raw)}/state/m.room.member/{quote(bob.user_id)}")
        assert content == {**member, **(avatar if include else {})}
        # Joining carries the profile either way (the option is about invites).
        assert (await bob.join(room))[0] == 200
        path = f"/rooms/{quote(room)}/state/m.room.member/{quote(bob.user_id)}"
        assert (await alice.ok("GET", path))["displayname"] == "bob"


# User directory --------------------------------------------------------------------------------


async def search(user: RawClient, term: str) -> list[str]:
    found = await user.ok("POST", "/user_directory/search", json={"search_term": term})
    return [r["user_id"] for r in found["results"]]


async def test_the_user_directory_finds_peers_and_public_rooms_by_default(tmp_path: Any) -> None:
    async with privacy_server(tmp_path) as (_, make):
        searcher, peer = await make("searcher"), await make("zpeer")
        hermit, public = await make("zhermit"), await make("zpublic")
        await make("zloner")  # in no room at all
        shared = await searcher.create_room(invite=[peer.user_id])
        assert (await peer.join(shared))[0] == 200
        await hermit.create_room()  # a private room of their own
        lobby = await peer.create_room(preset="public_chat")
        assert (await public.join(lobby))[0] == 200
        assert sorted(await search(searcher, "z")) == sorted([peer.user_id, public.user_id])
        assert await search(searcher, "zloner") == []


async def test_search_all_users(tmp_path: Any) -> None:
    async with privacy_server(tmp_path, user_directory={"search_all_users": True}) as (_, make):
        searcher, admin = await make("searcher"), await make("admin", admin=True)
        hermit, loner, gone = await make("zhermit"), await make("zloner"), await make("zgone")
        await hermit.create_room()
        await gone.create_room()
        await loner.ok(
            "PUT", f"/profile/{quote(loner.user_id)}/displayname", json={"displayname": "Lone Wolf"}
        )
        async with admin.session.post(
            f"{admin.base_url}/_synapse/admin/v1/deactivate/{quote(gone.user_id)}",
            json={},
            headers={"Authorization": f"Bearer {admin.token}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
        assert sorted(await search(searcher, "z")) == sorted([hermit.user_id, loner.user_id])
        # A user in no room is found by their account's display name.
        found = await searcher.ok("POST", "/user_directory/search", json={"search_term": "wolf"})
        assert found["results"] == [{"user_id": loner.user_id, "display_name": "Lone Wolf"}]


async def set_displayname(user: RawClient, name: str) -> None:
    await user.ok("PUT", f"/profile/{quote(user.user_id)}/displayname", json={"displayname": name})


async def admin_put(admin: RawClient, path: str, body: Any) -> None:
    async with admin.session.put(
        admin.base_url + path, json=body, headers={"Authorization": f"Bearer {admin.token}"}
    ) as resp:
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("search_all_users", [False, True])
async def test_per_room_display_names_stay_out_of_the_user_directory(
    tmp_path: Any, search_all_users: bool
) -> None:
    """As in Synapse, local users are listed with their global profile: a display name or
    avatar set in one (private) room is not searchable, nor shown, anywhere else."""
    overrides = {"user_directory": {"search_all_users": search_all_users}}
    async with privacy_server(tmp_path, **overrides) as (_, make):
        searcher, zed = await make("searcher"), await make("zed")
        shared = await searcher.create_room(invite=[zed.user_id])
        assert (await zed.join(shared))[0] == 200
        await set_displayname(zed, "Zed Global")
        hideout = await zed.create_room(preset="private_chat")
        nickname = {
            "membership": "join",
            "displayname": "Secret Nick",
            "avatar_url": "mxc://example.org/nick",
        }
        member = f"/rooms/{quote(hideout)}/state/m.room.member/{quote(zed.user_id)}"
        await zed.ok("PUT", member, json=nickname)
        for term in ("secret", "Secret Nick", "nick"):
            assert await search(searcher, term) == [], term
        found = await searcher.ok("POST", "/user_directory/search", json={"search_term": "global"})
        assert found["results"] == [{"user_id": zed.user_id, "display_name": "Zed Global"}]
        # Not even in the room the nickname was set in (a peer there sees it in the room).
        assert await search(zed, "secret") == []
        # Names in any script are found whatever their case (SQLite's lower() folds ASCII only).
        await set_displayname(zed, "Émile Иванов")
        for term in ("émile", "ÉMILE", "иванов", "Иванов"):
            found = await searcher.ok("POST", "/user_directory/search", json={"search_term": term})
            assert [r["user_id"] for r in found["results"]] == [zed.user_id], term


@pytest.mark.parametrize("search_all_users", [False, True])
async def test_locked_users_are_not_listed(tmp_path: Any, search_all_users: bool) -> None:
    overrides = {"user_directory": {"search_all_users": search_all_users}}
    async with privacy_server(tmp_path, **overrides) as (_, make):
        searcher, zed, admin = await make("searcher"), await make("zed"), await make("admin", admin=True)
        await zed.join(await searcher.create_room(preset="public_chat"))
        assert await search(searcher, "zed") == [zed.user_id]
        lock = f"/_matrix/client/v1/admin/lock/{quote(zed.user_id)}"
        await admin_put(admin, lock, {"locked": True})
        assert await search(searcher, "zed") == []
        await admin_put(admin, lock, {"locked": False})
        assert await search(searcher, "zed") == [zed.user_id]
        # The admin API's users PUT locks too.
        await admin_put(admin, f"/_synapse/admin/v2/users/{quote(zed.user_id)}", {"locked": True})
        assert await search(searcher, "zed") == []


async def test_user_directory_searches_are_rate_limited(tmp_path: Any) -> None:
    defaults = config_from_dict({"server_name": "example.org"}).rate_limits
    assert (defaults.user_directory_search_per_second, defaults.user_directory_search_burst) == (5.0, 20)
    limits = {"enabled": True, "user_directory_search_per_second": 0.01, "user_directory_search_burst": 3}
    async with privacy_server(tmp_path, rate_limits=limits) as (_, make):
        searcher, other, admin = await make("searcher"), await make("other"), await make("admin", admin=True)
        for _ in range(3):
            await search(searcher, "x")
        status, body = await searcher.request("POST", "/user_directory/search", json={"search_term": "x"})
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED"), body
        assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] > 0
        # Per user; admins are exempt.
        await search(other, "x")
        for _ in range(5):
            await search(admin, "x")


async def test_user_directory_limit_is_capped(tmp_path: Any) -> None:
    async with privacy_server(tmp_path, user_directory={"search_all_users": True}) as (srv, make):
        searcher = await make("searcher")
        for i in range(52):
            await srv.register(f"zz{i:02d}")
        found = await searcher.ok("POST", "/user_directory/search", json={"search_term": "zz", "limit": 1000})
        assert (len(found["results"]), found["limited"]) == (50, True)
        found = await searcher.ok("POST", "/user_directory/search", json={"search_term": "zz"})
        assert (len(found["results"]), found["limited"]) == (10, True)
        for bad in ("ten", -1, True):
            status, body = await searcher.request(
                "POST", "/user_directory/search", json={"search_term": "zz", "limit": bad}
            )
            assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), bad


# Config ----------------------------------------------------------------------------------------


def test_the_options_are_checked() -> None:
    base = {"server_name": "example.org"}
    cfg = config_from_dict(base)
    assert not cfg.room_directory.allow_public_rooms_without_auth
    assert not cfg.room_directory.allow_public_rooms_over_federation
    assert not cfg.user_directory.search_all_users
    assert not cfg.profiles.require_auth_for_profile_requests
    assert not cfg.profiles.limit_profile_requests_to_users_who_share_rooms
    assert cfg.profiles.allow_profile_lookup_over_federation
    assert cfg.profiles.include_profile_data_on_invite
    for section, key in (
        ("room_directory", "allow_public_rooms_without_auth"),
        ("room_directory", "allow_public_rooms_over_federation"),
        ("user_directory", "search_all_users"),
        ("profiles", "require_auth_for_profile_requests"),
        ("profiles", "limit_profile_requests_to_users_who_share_rooms"),
        ("profiles", "allow_profile_lookup_over_federation"),
        ("profiles", "include_profile_data_on_invite"),
    ):
        assert getattr(getattr(config_from_dict({**base, section: {key: True}}), section), key) is True
        with pytest.raises(ConfigError, match=rf"{section}\.{key} must be true or false"):
            config_from_dict({**base, section: {key: "yes"}})
    with pytest.raises(ConfigError, match=r"unknown config key: profiles\.limit_profile_requests"):
        config_from_dict({**base, "profiles": {"limit_profile_requests": True}})
    # The generated config names them, commented out.
    generated = generate_config_yaml("example.org")
    assert "#   allow_public_rooms_over_federation: true" in generated
    assert "#   limit_profile_requests_to_users_who_share_rooms: true" in generated
