"""The admin API's lookups about users: username availability, the user behind an SSO
identity or a third-party identifier, a user's account data, and the invites they sent and
rooms they joined since a time."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import aiohttp

from tests.security.support import Client, FakeClock, raw
from tests.security.test_admin_api import A1, A2, user
from tests.support.server import RunningServer, run_server


def per_user(user_id: str) -> list[str]:
    base = f"{A1}/users/{quote(user_id)}"
    return [
        f"{base}/accountdata",
        f"{base}/sent_invite_count?from_ts=0",
        f"{base}/cumulative_joined_room_count?from_ts=0",
    ]


async def test_admins_only(server: RunningServer, http: aiohttp.ClientSession) -> None:
    bob = await user(server, http, "bob")
    paths = [
        f"{A1}/username_available?username=free",
        f"{A1}/auth_providers/oidc/users/x",
        f"{A1}/threepid/email/users/{quote('a@b.c')}",
        *per_user(bob.user_id),
    ]
    for path in paths:
        status, out, _ = await raw(http, "GET", server.base_url + path, token=bob.token)
        assert (status, out["errcode"]) == (403, "M_FORBIDDEN"), path
        status, out, _ = await raw(http, "GET", server.base_url + path)
        assert (status, out["errcode"]) == (401, "M_MISSING_TOKEN"), path


async def test_unknown_and_remote_users(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    for path in per_user(f"@nobody:{server.server_name}"):
        status, out = await admin.request("GET", path)
        assert (status, out["errcode"], out["error"]) == (404, "M_NOT_FOUND", "User not found"), path
    for path in per_user("@someone:elsewhere.example"):
        status, out = await admin.request("GET", path)
        assert (status, out["errcode"]) == (400, "M_INVALID_PARAM"), path


async def test_username_available_while_registration_is_closed(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with run_server(str(tmp_path), registration={"enabled": False}) as server:
        admin = await user(server, http, "root", admin=True)
        await server.register("alice")
        status, out = await admin.request("GET", "/register/available", params={"username": "newbie"})
        assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
        url = f"{A1}/username_available"
        assert await admin.ok("GET", url, params={"username": "newbie"}) == {"available": True}
        for name, errcode in (
            ("alice", "M_USER_IN_USE"),
            ("ALICE", "M_USER_IN_USE"),  # user IDs are compared case-insensitively
            ("not valid!", "M_INVALID_USERNAME"),
            ("12345", "M_INVALID_USERNAME"),  # numeric IDs are for guests
        ):
            status, out = await admin.request("GET", url, params={"username": name})
            assert (status, out["errcode"]) == (400, errcode), name
        status, out = await admin.request("GET", url)
        assert (status, out["errcode"]) == (400, "M_MISSING_PARAM")


async def test_user_by_external_id_and_threepid(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    bob = await user(server, http, "bob")
    # Characters an identity provider's subject may hold, URL-encoded as Synapse advises.
    subject = "corp/42@idp:x"
    links = [{"auth_provider": "oidc-corp", "external_id": subject}]
    await admin.ok("PUT", f"{A2}/users/{quote(bob.user_id)}", json={"external_ids": links})

    found = await admin.ok("GET", f"{A1}/auth_providers/oidc-corp/users/{quote(subject, safe='')}")
    assert found == {"user_id": bob.user_id}
    for provider, external_id in (("oidc-corp", "corp"), ("oidc-other", subject)):
        status, out = await admin.request(
            "GET", f"{A1}/auth_providers/{provider}/users/{quote(external_id, safe='')}"
        )
        assert (status, out) == (404, {"errcode": "M_NOT_FOUND", "error": "User not found"})

    # This server keeps no third-party identifiers: no address leads to a user.
    status, out = await admin.request("GET", f"{A1}/threepid/email/users/{quote('bob@example.org')}")
    assert (status, out) == (404, {"errcode": "M_NOT_FOUND", "error": "User not found"})


async def test_account_data(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    url = f"{A1}/users/{quote(alice.user_id)}/accountdata"
    assert await admin.ok("GET", url) == {"account_data": {"global": {}, "rooms": {}}}

    room = await alice.create_room()
    me = f"/user/{quote(alice.user_id)}"
    await alice.ok("PUT", f"{me}/account_data/org.example.settings", json={"theme": "dark"})
    await alice.ok("PUT", f"{me}/account_data/org.example.settings", json={"theme": "light"})
    await alice.ok("PUT", f"{me}/account_data/m.ignored_user_list", json={"ignored_users": {}})
    await alice.ok("PUT", f"{me}/rooms/{quote(room)}/account_data/org.example.draft", json={"text": "hi"})
    assert await admin.ok("GET", url) == {
        "account_data": {
            "global": {
                "org.example.settings": {"theme": "light"},
                "m.ignored_user_list": {"ignored_users": {}},
            },
            "rooms": {room: {"org.example.draft": {"text": "hi"}}},
        }
    }
    # Another user's data stays theirs.
    bob = await user(server, http, "bob")
    bob_url = f"{A1}/users/{quote(bob.user_id)}/accountdata"
    assert await admin.ok("GET", bob_url) == {"account_data": {"global": {}, "rooms": {}}}


async def counts(admin: Client, user_id: str, from_ts: int) -> tuple[int, int]:
    base = f"{A1}/users/{quote(user_id)}"
    params = {"from_ts": str(from_ts)}
    invites = await admin.ok("GET", f"{base}/sent_invite_count", params=params)
    joins = await admin.ok("GET", f"{base}/cumulative_joined_room_count", params=params)
    assert set(invites) == {"invite_count"} and set(joins) == {"cumulative_joined_room_count"}
    return invites["invite_count"], joins["cumulative_joined_room_count"]


async def test_invite_and_joined_room_counts(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice, bob, carol, dave = [await user(server, http, n) for n in ("alice", "bob", "carol", "dave")]
    # Every event gets a time ten seconds after the one before, so from_ts can fall between them.
    clock = FakeClock(time.time() + 60)
    real_clock, server.hs.creator.clock = server.hs.creator.clock, clock

    def step() -> int:
        clock.now += 10
        return clock.time_ms()

    try:
        start = step()
        first = await alice.create_room()
        await alice.ok("POST", f"/rooms/{quote(first)}/invite", json={"user_id": bob.user_id})
        await alice.ok("POST", f"/rooms/{quote(first)}/invite", json={"user_id": carol.user_id})
        assert (await bob.join(first))[0] == 200
        # Not invites: taking an invite back, and a ban.
        await alice.ok("POST", f"/rooms/{quote(first)}/kick", json={"user_id": carol.user_id})
        await alice.ok("POST", f"/rooms/{quote(first)}/ban", json={"user_id": dave.user_id})
        # A new display name is a join event in the rooms one is in (here the first only).
        renamed = step()
        await bob.ok("PUT", f"/profile/{quote(bob.user_id)}/displayname", json={"displayname": "B"})

        middle = step()
        second = await alice.create_room(preset="public_chat")
        await alice.ok("POST", f"/rooms/{quote(second)}/invite", json={"user_id": bob.user_id})
        assert (await bob.join(second))[0] == 200
        # Leaving and joining again: still one room joined.
        rejoined = step()
        await bob.ok("POST", f"/rooms/{quote(second)}/leave", json={})
        assert (await bob.join(second))[0] == 200
        end = step()
    finally:
        server.hs.creator.clock = real_clock

    assert await counts(admin, alice.user_id, 0) == (3, 2)
    assert await counts(admin, alice.user_id, start) == (3, 2)
    assert await counts(admin, alice.user_id, middle) == (1, 1)
    assert await counts(admin, alice.user_id, end) == (0, 0)
    assert await counts(admin, alice.user_id, 10**30) == (0, 0)  # past any stored time
    assert await counts(admin, bob.user_id, 0) == (0, 2)
    assert await counts(admin, bob.user_id, middle) == (0, 1)
    assert await counts(admin, bob.user_id, rejoined) == (0, 1)
    # Counted as in Synapse, whose count is of the rooms with a join event since from_ts.
    assert await counts(admin, bob.user_id, renamed) == (0, 2)
    assert await counts(admin, bob.user_id, end) == (0, 0)
    assert await counts(admin, carol.user_id, 0) == (0, 0)  # invited, never joined
    assert await counts(admin, dave.user_id, 0) == (0, 0)


async def test_from_ts_is_required(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    base = f"{A1}/users/{quote(admin.user_id)}"
    for name in ("sent_invite_count", "cumulative_joined_room_count"):
        status, out = await admin.request("GET", f"{base}/{name}")
        assert (status, out["errcode"]) == (400, "M_MISSING_PARAM"), name
        for bad in ("soon", "-1", "1.5"):
            status, out = await admin.request("GET", f"{base}/{name}", params={"from_ts": bad})
            assert (status, out["errcode"]) == (400, "M_INVALID_PARAM"), (name, bad)
