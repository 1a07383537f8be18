"""Shadow-banning (POST/DELETE /_synapse/admin/v1/users/{userId}/shadow_ban): the user's
messages, state, redactions, invites and typing answer success and reach no one."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from tests.security.test_admin_api import A1, A2, user
from tests.support.server import RunningServer


async def test_a_shadow_banned_user_talks_to_no_one(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(server, http, "root", admin=True)
    spammer = await user(server, http, "spammer")
    alice = await user(server, http, "alice")
    carol = await user(server, http, "carol")
    room = await alice.room_with(spammer)
    path = f"{A1}/users/{quote(spammer.user_id)}/shadow_ban"
    assert await admin.ok("POST", path, json={}) == {}
    assert (await admin.ok("GET", f"{A2}/users/{quote(spammer.user_id)}"))["shadow_banned"] is True

    fake = await spammer.send(room, "buy now", "s1")
    assert fake.startswith("$")
    status, _ = await alice.request("GET", f"/rooms/{quote(room)}/event/{quote(fake)}")
    assert status == 404
    state = await spammer.ok("PUT", f"/rooms/{quote(room)}/state/org.example.spam/", json={"x": 1})
    assert state["event_id"].startswith("$")
    await spammer.ok("PUT", f"/rooms/{quote(room)}/typing/{quote(spammer.user_id)}", json={"typing": True})
    assert await spammer.ok("POST", f"/rooms/{quote(room)}/invite", json={"user_id": carol.user_id}) == {}
    dm = await spammer.create_room(invite=[carol.user_id])
    page = await alice.ok("GET", f"/rooms/{quote(room)}/messages", params={"dir": "b"})
    assert not [e for e in page["chunk"] if e["sender"] == spammer.user_id and e["type"] != "m.room.member"]
    sync = await carol.sync()
    assert room not in sync.get("rooms", {}).get("invite", {}) and dm not in sync.get("rooms", {}).get(
        "invite", {}
    )
    assert server.hs.typing.typing_users(room) == []
    # Not in the room: refused as anyone would be.
    other = await alice.create_room()
    status, out = await spammer.request(
        "PUT", f"/rooms/{quote(other)}/send/m.room.message/s2", json={"msgtype": "m.text", "body": "x"}
    )
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")

    assert await admin.ok("DELETE", path) == {}
    real = await spammer.send(room, "hello again", "s3")
    assert (await alice.ok("GET", f"/rooms/{quote(room)}/event/{quote(real)}"))["content"][
        "body"
    ] == "hello again"
    # Banned again, their redaction of it goes nowhere either.
    await admin.ok("POST", path, json={})
    redaction = await spammer.ok("PUT", f"/rooms/{quote(room)}/redact/{quote(real)}/r1", json={})
    assert redaction["event_id"].startswith("$")
    event = await alice.ok("GET", f"/rooms/{quote(room)}/event/{quote(real)}")
    assert event["content"]["body"] == "hello again"
    status, out = await admin.request(
        "POST", f"{A1}/users/{quote('@nobody:' + server.server_name)}/shadow_ban", json={}
    )
    assert status == 404
