"""Erased users (deactivation with `erase`): their events reach readers who were not joined
when they were sent pruned, as a redaction leaves them, through every way a client reads
history; those who were joined then see them whole. The admin API shows the flag, and
reactivation clears it. Deactivation without `erase` prunes nothing."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.support.http import RawClient
from tests.support.server import RunningServer

MakeUser = Callable[[str], Awaitable[RawClient]]
SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
WHOLE_TIMELINE = json.dumps({"room": {"timeline": {"limit": 100}}})


def v1(room_id: str, rest: str) -> str:
    return f"/_matrix/client/v1/rooms/{quote(room_id)}/{rest}"


class Admin(RawClient):
    """A server admin calling the admin API (its paths are not under /_matrix)."""

    async def ok(self, method: str, path: str, json: Any = None, params: dict[str, str] | None = None) -> Any:
        if not path.startswith("/_synapse/"):
            return await super().ok(method, path, json, params)
        async with self.session.request(
            method, self.base_url + path, json=json, params=params, headers=self._headers()
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, (method, path, resp.status, body)
            return body


async def admin_of(server: RunningServer, http: aiohttp.ClientSession) -> Admin:
    user_id = f"@admin:{server.server_name}"
    if not await server.hs.accounts.user_exists(user_id):
        await server.register("admin", admin=True)
    token, _ = await server.hs.auth.create_session(user_id, None, None)
    return Admin(http, server.base_url, token, user_id)


async def deactivate(admin: Admin, user_id: str, *, erase: bool) -> None:
    await admin.ok("POST", f"/_synapse/admin/v1/deactivate/{quote(user_id)}", json={"erase": erase})


async def messages(reader: RawClient, room_id: str) -> dict[str, dict[str, Any]]:
    """Event ID -> event, of the room's whole history as /messages gives it to `reader`."""
    page = await reader.ok("GET", f"/rooms/{quote(room_id)}/messages", params={"dir": "b", "limit": "100"})
    return {e["event_id"]: e for e in page["chunk"]}


async def sync_timeline(reader: RawClient, room_id: str) -> dict[str, dict[str, Any]]:
    """Event ID -> event, of the room's timeline in an initial /sync (`reader` is joined)."""
    body = await reader.sync(filter=WHOLE_TIMELINE)
    return {e["event_id"]: e for e in body["rooms"]["join"][room_id]["timeline"]["events"]}


async def event(reader: RawClient, room_id: str, event_id: str) -> dict[str, Any]:
    out: dict[str, Any] = await reader.ok("GET", f"/rooms/{quote(room_id)}/event/{quote(event_id)}")
    return out


def body_of(ev: dict[str, Any]) -> Any:
    return ev["content"].get("body")


@dataclass
class Room:
    room_id: str
    owner: RawClient
    witness: RawClient  # joined while erin spoke
    erin: RawClient
    member_id: str  # erin's join event
    said: list[str]  # erin's messages


async def room_where_erin_spoke(make_user: MakeUser, *, history_visibility: str = "shared") -> Room:
    owner = await make_user("olive")
    witness = await make_user("bob")
    erin = await make_user("erin")
    await erin.ok("PUT", f"/profile/{quote(erin.user_id)}/displayname", json={"displayname": "Erin E."})
    room_id = await owner.room_with(witness, erin)
    if history_visibility != "shared":
        await owner.ok(
            "PUT",
            f"/rooms/{quote(room_id)}/state/m.room.history_visibility/",
            json={"history_visibility": history_visibility},
        )
    member = await erin.ok("GET", f"/rooms/{quote(room_id)}/state/m.room.member/{quote(erin.user_id)}")
    assert member["displayname"] == "Erin E."
    said = [await erin.send(room_id, f"erin's secret {i}", f"e{i}") for i in range(2)]
    state = await owner.ok("GET", f"/rooms/{quote(room_id)}/state")
    member_id = next(
        e["event_id"] for e in state if e["type"] == "m.room.member" and e["state_key"] == erin.user_id
    )
    return Room(room_id, owner, witness, erin, member_id, said)


async def test_an_erased_users_messages_are_pruned_for_later_members_only(
    server: RunningServer, http: aiohttp.ClientSession, make_user: MakeUser
) -> None:
    room = await room_where_erin_spoke(make_user)
    admin = await admin_of(server, http)
    await room.owner.send(room.room_id, "olive's own words", "o1")
    await deactivate(admin, room.erin.user_id, erase=True)
    late = await make_user("carl")
    assert (await late.join(room.room_id))[0] == 200

    # /messages: pruned for the later member, whole for the witness (and erin's join
    # event keeps its membership, not her display name).
    seen_late, seen_witness = await messages(late, room.room_id), await messages(room.witness, room.room_id)
    for event_id in room.said:
        assert seen_late[event_id]["content"] == {}
        assert seen_late[event_id]["sender"] == room.erin.user_id
        assert "redacted_because" not in seen_late[event_id]["unsigned"]
        assert body_of(seen_witness[event_id]).startswith("erin's secret")
    assert seen_late[room.member_id]["content"] == {"membership": "join"}
    assert seen_witness[room.member_id]["content"]["displayname"] == "Erin E."
    # Nothing else changes: others' events stay whole.
    olive = [
        e for e in seen_late.values() if e["sender"] == room.owner.user_id and e["type"] == "m.room.message"
    ]
    assert [body_of(e) for e in olive] == ["olive's own words"]

    # An initial /sync's timeline.
    late_sync, witness_sync = (
        await sync_timeline(late, room.room_id),
        await sync_timeline(room.witness, room.room_id),
    )
    for event_id in room.said:
        assert late_sync[event_id]["content"] == {}
        assert body_of(witness_sync[event_id]).startswith("erin's secret")

    # Sliding sync's timeline.
    for reader, whole in ((late, False), (room.witness, True)):
        body = {"room_subscriptions": {room.room_id: {"timeline_limit": 50, "required_state": []}}}
        out = await reader.ok("POST", SLIDING_SYNC, json=body)
        timeline = {e["event_id"]: e for e in out["rooms"][room.room_id]["timeline"]}
        assert [bool(timeline[e]["content"]) for e in room.said] == [whole, whole]

    # /event and /context.
    assert (await event(late, room.room_id, room.said[0]))["content"] == {}
    assert body_of(await event(room.witness, room.room_id, room.said[0])) == "erin's secret 0"
    path = f"/rooms/{quote(room.room_id)}/context/{quote(room.said[1])}"
    context = await late.ok("GET", path, params={"limit": "4"})
    assert context["event"]["content"] == {}
    assert [e["content"] for e in context["events_before"] if e["event_id"] == room.said[0]] == [{}]
    context = await room.witness.ok("GET", path, params={"limit": "4"})
    assert body_of(context["event"]) == "erin's secret 1"

    # Search: the later member finds nothing of erin's words (their pruned form has none).
    search = {"search_categories": {"room_events": {"search_term": "secret"}}}
    found = await late.ok("POST", "/search", json=search)
    assert found["search_categories"]["room_events"]["results"] == []
    found = await room.witness.ok("POST", "/search", json=search)
    assert {r["result"]["event_id"] for r in found["search_categories"]["room_events"]["results"]} == set(
        room.said
    )

    # The context of a result: erin's messages around olive's are pruned for the later member.
    around_olive: dict[str, Any] = {
        "search_categories": {
            "room_events": {"search_term": "olive", "event_context": {"before_limit": 5, "after_limit": 0}}
        }
    }
    for reader, whole in ((late, False), (room.witness, True)):
        found = await reader.ok("POST", "/search", json=around_olive)
        [result] = found["search_categories"]["room_events"]["results"]
        around = {e["event_id"]: e for e in result["context"]["events_before"]}
        assert [bool(around[e]["content"]) for e in room.said] == [whole, whole]

    # The stored events are untouched: the witness still reads them whole after all that.
    assert body_of(await event(room.witness, room.room_id, room.said[1])) == "erin's secret 1"


async def test_relations_threads_and_bundled_edits_are_pruned_too(
    server: RunningServer, http: aiohttp.ClientSession, make_user: MakeUser
) -> None:
    room = await room_where_erin_spoke(make_user)
    room_path = f"/rooms/{quote(room.room_id)}"
    root = await room.owner.send(room.room_id, "a thread", "root")
    reply = await room.erin.ok(
        "PUT",
        f"{room_path}/send/m.room.message/reply",
        json={
            "msgtype": "m.text",
            "body": "erin's reply",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        },
    )
    # Erin's own thread, olive answering in it.
    erins_root = room.said[1]
    await room.owner.ok(
        "PUT",
        f"{room_path}/send/m.room.message/answer",
        json={
            "msgtype": "m.text",
            "body": "olive's answer",
            "m.relates_to": {"rel_type": "m.thread", "event_id": erins_root},
        },
    )
    edited = room.said[0]
    await room.erin.ok(
        "PUT",
        f"{room_path}/send/m.room.message/edit",
        json={
            "msgtype": "m.text",
            "body": "* erin's edit",
            "m.new_content": {"msgtype": "m.text", "body": "erin's edit"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": edited},
        },
    )
    admin = await admin_of(server, http)
    await deactivate(admin, room.erin.user_id, erase=True)
    late = await make_user("carl")
    assert (await late.join(room.room_id))[0] == 200

    relations = await late.ok("GET", v1(room.room_id, f"relations/{quote(root)}"))
    assert [(e["event_id"], e["content"]) for e in relations["chunk"]] == [(reply["event_id"], {})]
    relations = await room.witness.ok("GET", v1(room.room_id, f"relations/{quote(root)}"))
    assert [body_of(e) for e in relations["chunk"]] == ["erin's reply"]

    threads = {t["event_id"]: t for t in (await late.ok("GET", v1(room.room_id, "threads")))["chunk"]}
    assert body_of(threads[root]) == "a thread"
    assert threads[root]["unsigned"]["m.relations"]["m.thread"]["latest_event"]["content"] == {}
    assert threads[erins_root]["content"] == {}
    assert (
        body_of(threads[erins_root]["unsigned"]["m.relations"]["m.thread"]["latest_event"])
        == "olive's answer"
    )
    threads = {t["event_id"]: t for t in (await room.witness.ok("GET", v1(room.room_id, "threads")))["chunk"]}
    assert body_of(threads[root]["unsigned"]["m.relations"]["m.thread"]["latest_event"]) == "erin's reply"
    assert body_of(threads[erins_root]) == "erin's secret 1"

    # The edit bundled with the edited message: pruned for the later member only.
    bundled = (await event(late, room.room_id, edited))["unsigned"]["m.relations"]["m.replace"]
    assert bundled["content"] == {}
    bundled = (await event(room.witness, room.room_id, edited))["unsigned"]["m.relations"]["m.replace"]
    assert bundled["content"]["m.new_content"]["body"] == "erin's edit"


async def test_joined_at_the_event_is_what_counts(
    server: RunningServer, http: aiohttp.ClientSession, make_user: MakeUser
) -> None:
    """A member who left and came back sees whole what erin sent while they were in the
    room, pruned what she sent while they were away; one who left sees what they saw."""
    owner = await make_user("olive")
    erin = await make_user("erin")
    frank = await make_user("frank")
    gail = await make_user("gail")
    room_id = await owner.room_with(erin, frank, gail)
    # Frank changes his display name: member events that are not joins or leaves are walked.
    await frank.ok(
        "PUT",
        f"/rooms/{quote(room_id)}/state/m.room.member/{quote(frank.user_id)}",
        json={"membership": "join", "displayname": "Frank F."},
    )
    before = await erin.send(room_id, "while frank is here", "e1")
    await frank.ok("POST", f"/rooms/{quote(room_id)}/leave", json={})
    await gail.ok("POST", f"/rooms/{quote(room_id)}/leave", json={})
    away = await erin.send(room_id, "while frank is away", "e2")
    assert (await frank.join(room_id))[0] == 200
    after = await erin.send(room_id, "frank is back", "e3")
    await deactivate(await admin_of(server, http), erin.user_id, erase=True)

    seen = await messages(frank, room_id)
    assert body_of(seen[before]) == "while frank is here"
    assert seen[away]["content"] == {}
    assert body_of(seen[after]) == "frank is back"
    # Gail left before the last two: she reads history up to her leave, all of it whole.
    seen = await messages(gail, room_id)
    assert body_of(seen[before]) == "while frank is here"
    assert away not in seen and after not in seen


async def test_world_readable_history_is_pruned_for_a_reader_never_joined(
    server: RunningServer, http: aiohttp.ClientSession, make_user: MakeUser
) -> None:
    room = await room_where_erin_spoke(make_user, history_visibility="world_readable")
    await deactivate(await admin_of(server, http), room.erin.user_id, erase=True)
    peeker = await make_user("pete")
    seen = await messages(peeker, room.room_id)
    assert [seen[e]["content"] for e in room.said] == [{}, {}]
    # Room previews (GET /rooms/{id}/initialSync) too.
    preview = await peeker.ok("GET", f"/rooms/{quote(room.room_id)}/initialSync")
    chunk = {e["event_id"]: e for e in preview["messages"]["chunk"]}
    assert [chunk[e]["content"] for e in room.said] == [{}, {}]
    # And GET /events?room_id= from the room's start.
    since = await peeker.ok("GET", "/events", params={"room_id": room.room_id, "from": "t0", "timeout": "0"})
    chunk = {e["event_id"]: e for e in since["chunk"]}
    assert [chunk[e]["content"] for e in room.said] == [{}, {}]
    # A server admin reviewing the room reads it whole.
    review = await (await admin_of(server, http)).ok(
        "GET", f"/_synapse/admin/v1/rooms/{quote(room.room_id)}/messages", params={"dir": "b", "limit": "100"}
    )
    reviewed = {e["event_id"]: e for e in review["chunk"]}
    assert [body_of(reviewed[e]) for e in room.said] == ["erin's secret 0", "erin's secret 1"]


async def test_the_admin_api_shows_the_flag_and_reactivation_clears_it(
    server: RunningServer, http: aiohttp.ClientSession, make_user: MakeUser
) -> None:
    room = await room_where_erin_spoke(make_user)
    admin = await admin_of(server, http)
    user_path = f"/_synapse/admin/v2/users/{quote(room.erin.user_id)}"
    assert (await admin.ok("GET", user_path))["erased"] is False
    await deactivate(admin, room.erin.user_id, erase=True)
    shown = await admin.ok("GET", user_path)
    assert (shown["deactivated"], shown["erased"]) == (True, True)
    listed = await admin.ok("GET", "/_synapse/admin/v2/users", params={"deactivated": "true"})
    assert {u["name"]: u["erased"] for u in listed["users"]}[room.erin.user_id] is True
    late = await make_user("carl")
    assert (await late.join(room.room_id))[0] == 200
    assert [(await messages(late, room.room_id))[e]["content"] for e in room.said] == [{}, {}]

    await admin.ok("PUT", user_path, json={"deactivated": False, "password": "new password"})
    shown = await admin.ok("GET", user_path)
    assert (shown["deactivated"], shown["erased"]) == (False, False)
    seen = await messages(late, room.room_id)
    assert [body_of(seen[e]) for e in room.said] == ["erin's secret 0", "erin's secret 1"]


async def test_erasing_through_the_client_api(
    server: RunningServer, http: aiohttp.ClientSession, make_user: MakeUser
) -> None:
    room = await room_where_erin_spoke(make_user)
    status, body = await room.erin.request("POST", "/account/deactivate", json={"erase": True})
    assert status == 401
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": room.erin.user_id},
        "password": "password",
        "session": body["session"],
    }
    await room.erin.ok("POST", "/account/deactivate", json={"erase": True, "auth": auth})
    assert await server.hs.accounts.erased.is_erased(room.erin.user_id)
    late = await make_user("carl")
    assert (await late.join(room.room_id))[0] == 200
    assert [(await messages(late, room.room_id))[e]["content"] for e in room.said] == [{}, {}]


async def test_deactivation_without_erase_prunes_nothing(
    server: RunningServer, http: aiohttp.ClientSession, make_user: MakeUser
) -> None:
    room = await room_where_erin_spoke(make_user)
    admin = await admin_of(server, http)
    await deactivate(admin, room.erin.user_id, erase=False)
    assert (await admin.ok("GET", f"/_synapse/admin/v2/users/{quote(room.erin.user_id)}"))["erased"] is False
    late = await make_user("carl")
    assert (await late.join(room.room_id))[0] == 200
    seen = await messages(late, room.room_id)
    assert [body_of(seen[e]) for e in room.said] == ["erin's secret 0", "erin's secret 1"]
    timeline = await sync_timeline(late, room.room_id)
    assert [body_of(timeline[e]) for e in room.said] == ["erin's secret 0", "erin's secret 1"]
