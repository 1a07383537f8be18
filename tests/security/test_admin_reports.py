"""Server admins read and clear users' reports (event, room and user reports) through
Synapse's admin API shape."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from tests.security.test_admin_api import A1, user
from tests.support.server import RunningServer


async def test_reports_are_listed_paged_filtered_and_deleted(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    bob = await user(server, http, "bob")
    carol = await user(server, http, "carol")
    room = await alice.create_room(preset="public_chat", name="Reported place", room_alias_name="place")
    other = await alice.create_room(preset="public_chat")
    for member in (bob, carol):
        for r in (room, other):
            assert (await member.join(r))[0] == 200
    rude = await alice.send(room, "rude words", "t1")
    also = await alice.send(other, "more words", "t2")
    await bob.ok("POST", f"/rooms/{quote(room)}/report/{quote(rude)}", json={"reason": "spam", "score": -100})
    await carol.ok("POST", f"/rooms/{quote(other)}/report/{quote(also)}", json={"reason": "meh"})
    await bob.ok("POST", f"/rooms/{quote(room)}/report", json={"reason": "bad room"})
    await carol.ok("POST", f"/users/{quote(alice.user_id)}/report", json={"reason": "bad user"})

    listed = await admin.ok("GET", f"{A1}/event_reports")
    assert listed["total"] == 2 and "next_token" not in listed
    newest, oldest = listed["event_reports"]
    assert (newest["user_id"], newest["event_id"], newest["reason"]) == (carol.user_id, also, "meh")
    assert oldest == {
        "id": oldest["id"],
        "received_ts": oldest["received_ts"],
        "user_id": bob.user_id,
        "reason": "spam",
        "room_id": room,
        "name": "Reported place",
        "canonical_alias": f"#place:{server.server_name}",
        "event_id": rude,
        "score": -100,
        "sender": alice.user_id,
    }
    forwards = await admin.ok("GET", f"{A1}/event_reports", params={"dir": "f", "limit": "1"})
    assert [r["id"] for r in forwards["event_reports"]] == [oldest["id"]] and forwards["next_token"] == 1
    rest = await admin.ok("GET", f"{A1}/event_reports", params={"dir": "f", "from": "1"})
    assert [r["id"] for r in rest["event_reports"]] == [newest["id"]]
    by_carol = await admin.ok("GET", f"{A1}/event_reports", params={"user_id": "carol"})
    assert [r["id"] for r in by_carol["event_reports"]] == [newest["id"]] and by_carol["total"] == 1
    in_room = await admin.ok("GET", f"{A1}/event_reports", params={"room_id": room[1:8]})
    assert [r["id"] for r in in_room["event_reports"]] == [oldest["id"]]
    # A filter is a part of the ID taken literally: "%" matches nothing here.
    assert (await admin.ok("GET", f"{A1}/event_reports", params={"user_id": "%"}))["total"] == 0

    detail = await admin.ok("GET", f"{A1}/event_reports/{oldest['id']}")
    assert detail["event_json"]["content"]["body"] == "rude words" and detail["sender"] == alice.user_id

    (room_report,) = (await admin.ok("GET", f"{A1}/room_reports"))["room_reports"]
    assert (room_report["room_id"], room_report["reason"], room_report["topic"]) == (room, "bad room", None)
    (user_report,) = (await admin.ok("GET", f"{A1}/user_reports"))["user_reports"]
    assert (user_report["target_user_id"], user_report["user_id"]) == (alice.user_id, carol.user_id)
    # IDs are per kind: a room report is not an event report.
    status, body = await admin.request("GET", f"{A1}/event_reports/{room_report['id']}")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

    assert await admin.ok("DELETE", f"{A1}/event_reports/{oldest['id']}") == {}
    status, body = await admin.request("GET", f"{A1}/event_reports/{oldest['id']}")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await admin.request("DELETE", f"{A1}/event_reports/{oldest['id']}")
    assert status == 404
    assert (await admin.ok("GET", f"{A1}/event_reports"))["total"] == 1
    for path, params in (
        (f"{A1}/event_reports/abc", None),
        (f"{A1}/event_reports", {"dir": "x"}),
        (f"{A1}/event_reports", {"limit": "0"}),
    ):
        status, body = await admin.request("GET", path, params=params)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), (path, body)
    status, body = await bob.request("GET", f"{A1}/event_reports")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_an_admin_reads_a_reported_rooms_history(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    """Reviewing a report: the admin, not in the private room, reads all of its history
    (members who joined late see only theirs)."""
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    room = await alice.create_room(preset="private_chat")
    await alice.ok(
        "PUT", f"/rooms/{quote(room)}/state/m.room.history_visibility", json={"history_visibility": "joined"}
    )
    early = await alice.send(room, "before anyone came", "t1")
    late = await alice.send(room, "later words", "t2")
    path = f"{A1}/rooms/{quote(room)}/messages"
    page = await admin.ok("GET", path, params={"limit": "1"})
    assert [e["event_id"] for e in page["chunk"]] == [late]
    more = await admin.ok("GET", path, params={"from": page["end"], "limit": "50"})
    assert early in [e["event_id"] for e in more["chunk"]]
    forwards = await admin.ok("GET", path, params={"dir": "f", "limit": "50"})
    ids = [e["event_id"] for e in forwards["chunk"]]
    assert ids.index(early) < ids.index(late)
    # The admin is not a member, and the client API still says so.
    status, out = await admin.request("GET", f"/rooms/{quote(room)}/messages")
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    status, out = await admin.request("GET", f"{A1}/rooms/{quote('!nope:' + server.server_name)}/messages")
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")
    # A reported event in its context, likewise.
    context = await admin.ok("GET", f"{A1}/rooms/{quote(room)}/context/{quote(early)}", params={"limit": "4"})
    assert context["event"]["event_id"] == early
    assert [e["event_id"] for e in context["events_after"]][:1] == [late]
    assert any(e["type"] == "m.room.create" for e in context["state"])
    status, out = await admin.request("GET", f"/rooms/{quote(room)}/context/{quote(early)}")
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
    status, out = await admin.request("GET", f"{A1}/rooms/{quote(room)}/context/$nope")
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")
