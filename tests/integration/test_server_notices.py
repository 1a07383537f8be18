"""Server notices: an admin's notice reaches the user (matrix-nio) in one invited room tagged
m.server_notice, where the user cannot send and whose invite cannot be rejected."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest
from nio import JoinResponse, RoomMessageNotice, RoomMessageText, RoomSendError, SyncResponse

from tests.security.support import Client
from tests.support.nio_clients import nio_client
from tests.support.server import RunningServer, run_server

PATH = "/_synapse/admin/v1/send_server_notice"
NOTICE = {
    "msgtype": "m.server_notice",
    "body": "Maintenance tonight",
    "server_notice_type": "m.server_notice",
}


@pytest.fixture
async def noticing() -> AsyncIterator[RunningServer]:
    with tempfile.TemporaryDirectory() as tmp:
        async with run_server(tmp, server_notices={"localpart": "notices"}) as srv:
            yield srv


async def admin_of(server: RunningServer, http: aiohttp.ClientSession) -> Client:
    user_id = await server.register("root", admin=True)
    token, _ = await server.hs.auth.create_session(user_id, None, None)
    return Client(http, server.base_url, token, user_id)


async def test_a_notice_reaches_the_user(noticing: RunningServer, http: aiohttp.ClientSession) -> None:
    server = noticing
    admin = await admin_of(server, http)
    system = f"@notices:{server.server_name}"
    async with nio_client(server, "bob") as bob:
        first = await admin.ok("POST", PATH, json={"user_id": bob.user_id, "content": NOTICE})
        sync = await bob.sync(timeout=0)
        assert isinstance(sync, SyncResponse)
        (room_id,) = bob.invited_rooms
        assert isinstance(await bob.join(room_id), JoinResponse)
        await bob.sync(timeout=0)
        room = bob.rooms[room_id]
        assert "m.server_notice" in room.tags
        assert room.name == "Server Notices"
        assert room.users[system].display_name == "Server Notices"
        messages = await bob.room_messages(room_id, start="", limit=10)
        notices = [e for e in messages.chunk if e.sender == system and e.source["type"] == "m.room.message"]
        assert [e.event_id for e in notices] == [first["event_id"]]
        assert notices[0].source["content"]["body"] == "Maintenance tonight"
        assert isinstance(
            await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"}), RoomSendError
        )

        # The next notice goes to the same room; a repeated transaction ID sends nothing twice.
        again = await admin.ok(
            "PUT", f"{PATH}/t1", json={"user_id": bob.user_id, "content": {"msgtype": "m.text", "body": "2"}}
        )
        repeat = await admin.ok(
            "PUT", f"{PATH}/t1", json={"user_id": bob.user_id, "content": {"msgtype": "m.text", "body": "2"}}
        )
        assert again == repeat
        await bob.sync(timeout=0)
        assert list(bob.rooms) == [room_id]
        latest = await bob.room_messages(room_id, start="", limit=1)
        assert isinstance(latest.chunk[0], (RoomMessageText, RoomMessageNotice))
        assert latest.chunk[0].event_id == again["event_id"]

        # Left after joining (allowed): the next notice opens a new room.
        await bob.room_leave(room_id)
        await admin.ok("POST", PATH, json={"user_id": bob.user_id, "content": NOTICE})
        await bob.sync(timeout=0)
        assert list(bob.invited_rooms) not in ([], [room_id])


async def test_the_invite_cannot_be_rejected(noticing: RunningServer, http: aiohttp.ClientSession) -> None:
    server = noticing
    admin = await admin_of(server, http)
    async with nio_client(server, "carol") as carol:
        await admin.ok("POST", PATH, json={"user_id": carol.user_id, "content": NOTICE})
        await carol.sync(timeout=0)
        (room_id,) = carol.invited_rooms
        status, body = await Client(http, server.base_url, carol.access_token, carol.user_id).request(
            "POST", f"/rooms/{quote(room_id)}/leave", json={}
        )
        assert (status, body["errcode"]) == (403, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM")
        # Other invites are rejected as ever.
        other = await admin.create_room(invite=[carol.user_id])
        status, _ = await Client(http, server.base_url, carol.access_token, carol.user_id).request(
            "POST", f"/rooms/{quote(other)}/leave", json={}
        )
        assert status == 200


async def test_refusals(noticing: RunningServer, server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await admin_of(noticing, http)
    bob_id = await noticing.register("bob")
    for body, status, errcode in (
        ({"user_id": "@x:elsewhere.example", "content": NOTICE}, 400, "M_INVALID_PARAM"),
        ({"user_id": f"@nobody:{noticing.server_name}", "content": NOTICE}, 404, "M_NOT_FOUND"),
        ({"user_id": bob_id, "content": "text"}, 400, "M_BAD_JSON"),
        ({"content": NOTICE}, 400, "M_MISSING_PARAM"),
    ):
        got, out = await admin.request("POST", PATH, json=body)
        assert (got, out["errcode"]) == (status, errcode), body
    token, _ = await noticing.hs.auth.create_session(bob_id, None, None)
    got, out = await Client(http, noticing.base_url, token, bob_id).request(
        "POST", PATH, json={"user_id": bob_id, "content": NOTICE}
    )
    assert (got, out["errcode"]) == (403, "M_FORBIDDEN")
    # A server without `server_notices.localpart` sends none.
    plain_admin = await admin_of(server, http)
    got, out = await plain_admin.request(
        "POST", PATH, json={"user_id": plain_admin.user_id, "content": NOTICE}
    )
    assert got == 400 and "not enabled" in out["error"]


async def test_racing_notices_share_one_room(noticing: RunningServer, http: aiohttp.ClientSession) -> None:
    server = noticing
    admin = await admin_of(server, http)
    erin = await server.register("erin")
    sent = await asyncio.gather(
        *(
            admin.ok("POST", PATH, json={"user_id": erin, "content": {**NOTICE, "body": f"n{i}"}})
            for i in range(3)
        )
    )
    rooms = {(await server.hs.events.get_event(s["event_id"])).event.room_id for s in sent}  # type: ignore[union-attr]
    assert len(rooms) == 1
