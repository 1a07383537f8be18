"""What /versions claims holds: for each spec version advertised since v1.12, one of its
requirements, exercised (each is tested in depth in its own file)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

from tests.support.http import RawClient
from tests.support.server import RunningServer

MakeUser = Callable[[str], Awaitable[RawClient]]


async def test_the_versions_advertised_hold(server: RunningServer, make_user: MakeUser) -> None:
    admin_id = await server.register("root", admin=True)
    alice = await make_user("alice")
    bob = await make_user("bob")
    async with alice.session.get(f"{server.base_url}/_matrix/client/versions") as resp:
        versions = await resp.json()
    advertised = set(versions["versions"])
    assert {f"v1.{n}" for n in range(11, 20)} <= advertised
    assert versions["unstable_features"]["org.matrix.msc4222"] is True
    room = await alice.create_room(preset="public_chat", name="Versions")

    # v1.12: joining with `via`; the account locking API (admins).
    assert (await bob.request("POST", f"/join/{quote(room)}", params={"via": server.server_name}))[0] == 200
    token, _ = await server.hs.auth.create_session(admin_id, None, None)
    async with alice.session.get(
        f"{server.base_url}/_matrix/client/v1/admin/lock/{quote(bob.user_id)}",
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200 and await resp.json() == {"locked": False}
    # v1.13: reporting a room; requestToken's error codes.
    assert await bob.ok("POST", f"/rooms/{quote(room)}/report", json={"reason": "test"}) == {}
    body = {"client_secret": "abc", "email": "a@example.org", "send_attempt": 1}
    status, out = await alice.request("POST", "/account/3pid/email/requestToken", json=body)
    assert (status, out["errcode"]) == (400, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
    # v1.14: reporting a user.
    assert await bob.ok("POST", f"/users/{quote(alice.user_id)}/report", json={"reason": "test"}) == {}
    # v1.15: the room summary.
    async with alice.session.get(
        f"{server.base_url}/_matrix/client/v1/room_summary/{quote(room)}",
        headers={"Authorization": f"Bearer {alice.token}"},
    ) as resp:
        summary = await resp.json()
    assert resp.status == 200 and (summary["room_id"], summary["name"]) == (room, "Versions")
    # v1.16: custom profile fields and the m.profile_fields capability; state_after;
    # format=event; the create event in invite state.
    caps = (await alice.ok("GET", "/capabilities"))["capabilities"]
    assert caps["m.profile_fields"] == {"enabled": True}
    assert await alice.ok("PUT", f"/profile/{quote(alice.user_id)}/m.tz", json={"m.tz": "Europe/Paris"}) == {}
    assert (await bob.ok("GET", f"/profile/{quote(alice.user_id)}"))["m.tz"] == "Europe/Paris"
    synced = await alice.sync(use_state_after="true")
    assert "state_after" in synced["rooms"]["join"][room]
    name_event = await alice.ok("GET", f"/rooms/{quote(room)}/state/m.room.name/", params={"format": "event"})
    assert name_event["type"] == "m.room.name" and name_event["content"] == {"name": "Versions"}
    carol = await make_user("carol")
    private = await alice.create_room(invite=[carol.user_id])
    invite_state = (await carol.sync())["rooms"]["invite"][private]["invite_state"]["events"]
    assert "m.room.create" in {e["type"] for e in invite_state}
    # v1.17's application service changes: tests/integration/test_appservice.py.
    # v1.18: invite blocking (test_invite_permission.py); a redaction through /send.
    await carol.ok(
        "PUT",
        f"/user/{quote(carol.user_id)}/account_data/m.invite_permission_config",
        json={"default_action": "block"},
    )
    status, out = await alice.request("POST", f"/rooms/{quote(room)}/invite", json={"user_id": carol.user_id})
    assert (status, out["errcode"]) == (403, "M_INVITE_BLOCKED")
    doomed = await alice.send(room, "to be redacted", "r0")
    await alice.ok("PUT", f"/rooms/{quote(room)}/send/m.room.redaction/r1", json={"redacts": doomed})
    assert (await alice.ok("GET", f"/rooms/{quote(room)}/event/{quote(doomed)}"))["content"] == {}
    # v1.19: unsigned.replaces_state; /mutual_rooms (test_small_endpoints.py).
    first = await alice.ok("PUT", f"/rooms/{quote(room)}/state/m.room.topic", json={"topic": "one"})
    await alice.ok("PUT", f"/rooms/{quote(room)}/state/m.room.topic", json={"topic": "two"})
    latest = await alice.ok("GET", f"/rooms/{quote(room)}/messages", params={"dir": "b", "limit": "1"})
    assert latest["chunk"][0]["unsigned"]["replaces_state"] == first["event_id"]
