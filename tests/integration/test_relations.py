"""Edits, reactions, references and threads through /relations, /threads and bundled aggregations."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
from mautrix.api import Method
from mautrix.client import Client
from mautrix.types import EventType, RelationType, RoomID, UserID
from nio import RoomSendResponse

from tests.support.http import RawClient
from tests.support.nio_clients import nio_client
from tests.support.server import RunningServer


def v1(room_id: str, rest: str) -> str:
    return f"/_matrix/client/v1/rooms/{quote(room_id)}/{rest}"


async def test_edit_and_reaction_visible_through_relations_and_aggregation(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "bob") as bob:
        room_id = (await alice.room_create(invite=[bob.user_id])).room_id
        await bob.join(room_id)
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "I like cake"})
        assert isinstance(sent, RoomSendResponse)
        original = sent.event_id
        edit = await alice.room_send(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": "* I like chocolate cake",
                "m.new_content": {"msgtype": "m.text", "body": "I like chocolate cake"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": original},
            },
        )
        assert isinstance(edit, RoomSendResponse)
        for txn, who in (("r1", bob), ("r2", alice)):
            react = await who.room_send(
                room_id,
                "m.reaction",
                {"m.relates_to": {"rel_type": "m.annotation", "event_id": original, "key": "👍"}},
                tx_id=txn,
            )
            assert isinstance(react, RoomSendResponse)

        async with aiohttp.ClientSession() as session:
            raw = RawClient(session, server.base_url, bob.access_token, bob.user_id)
            rels = await raw.ok("GET", v1(room_id, f"relations/{quote(original)}"))
            assert len(rels["chunk"]) == 3
            only_edits = await raw.ok("GET", v1(room_id, f"relations/{quote(original)}/m.replace"))
            assert [e["event_id"] for e in only_edits["chunk"]] == [edit.event_id]
            path = f"relations/{quote(original)}/m.annotation/m.reaction"
            reactions = await raw.ok("GET", v1(room_id, path))
            assert {e["sender"] for e in reactions["chunk"]} == {alice.user_id, bob.user_id}
            # Pagination: one at a time, oldest first.
            page1 = await raw.ok(
                "GET", v1(room_id, f"relations/{quote(original)}"), params={"limit": "1", "dir": "f"}
            )
            page2 = await raw.ok(
                "GET",
                v1(room_id, f"relations/{quote(original)}"),
                params={"limit": "1", "dir": "f", "from": page1["next_batch"]},
            )
            assert page1["chunk"][0]["event_id"] == edit.event_id
            assert page2["chunk"][0]["event_id"] != edit.event_id

            synced = await raw.sync()
            timeline = synced["rooms"]["join"][room_id]["timeline"]["events"]
            orig = next(e for e in timeline if e["event_id"] == original)
            bundled = orig["unsigned"]["m.relations"]
            assert bundled["m.replace"]["event_id"] == edit.event_id
            assert bundled["m.replace"]["content"]["m.new_content"]["body"] == "I like chocolate cake"
            assert bundled["m.annotation"]["chunk"] == [{"type": "m.reaction", "key": "👍", "count": 2}]
            # /messages, /event and /context carry the same bundles.
            page = await raw.ok("GET", f"/rooms/{quote(room_id)}/messages", params={"limit": "20"})
            in_page = next(e for e in page["chunk"] if e["event_id"] == original)
            assert in_page["unsigned"]["m.relations"]["m.replace"]["event_id"] == edit.event_id
            single = await raw.ok("GET", f"/rooms/{quote(room_id)}/event/{quote(original)}")
            assert single["unsigned"]["m.relations"]["m.annotation"]["chunk"][0]["count"] == 2
            ctx = await raw.ok("GET", f"/rooms/{quote(room_id)}/context/{quote(original)}")
            assert ctx["event"]["unsigned"]["m.relations"]["m.replace"]["event_id"] == edit.event_id

            status, body = await raw.request("GET", v1(room_id, "relations/$unknown"))
            assert status == 404 and body["errcode"] == "M_NOT_FOUND"


async def test_threads_with_mautrix(server: RunningServer) -> None:
    clients: list[Client] = []
    try:
        for name in ("carol", "dan"):
            await server.register(name)
            c = Client(mxid=UserID(f"@{name}:{server.server_name}"), base_url=server.base_url)
            await c.login(password="password")
            clients.append(c)
        carol, dan = clients
        room_id = await carol.create_room(invitees=[dan.mxid])
        await dan.join_room(room_id)
        roots = []
        for i in range(2):
            roots.append(await carol.send_text(room_id, f"root {i}"))
        for i, root in enumerate(roots):
            reply: Any = {
                "msgtype": "m.text",
                "body": f"reply {i}",
                "m.relates_to": {"rel_type": str(RelationType.THREAD), "event_id": root},
            }
            await dan.send_message_event(room_id, EventType.ROOM_MESSAGE, reply)
        threads: Any = await dan.api.request(Method.GET, v1(room_id, "threads"))
        # Most recently active first, with the m.thread bundle.
        assert [t["event_id"] for t in threads["chunk"]] == [roots[1], roots[0]]
        summary = threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
        assert summary["count"] == 1 and summary["current_user_participated"] is True
        assert summary["latest_event"]["content"]["body"] == "reply 1"
        threads_path = v1(room_id, "threads")
        first_page: Any = await dan.api.request(Method.GET, threads_path, query_params={"limit": "1"})
        second_page: Any = await dan.api.request(
            Method.GET, threads_path, query_params={"limit": "1", "from": first_page["next_batch"]}
        )
        assert [t["event_id"] for t in first_page["chunk"] + second_page["chunk"]] == [roots[1], roots[0]]
        participated: Any = await carol.api.request(
            Method.GET, v1(room_id, "threads"), query_params={"include": "participated"}
        )
        assert len(participated["chunk"]) == 2
        await carol.send_text(RoomID(room_id), "unrelated")
    finally:
        for c in clients:
            await c.api.session.close()


async def test_overlong_relations_are_no_relation(server: RunningServer, http: aiohttp.ClientSession) -> None:
    """A relation type or target too long for the `events` columns makes no relation (SQLite
    stored it whole, PostgreSQL cut it short, and the port between them refused it); the
    message is stored all the same."""
    login = await server.login("alice")
    alice = RawClient(http, server.base_url, login["access_token"], login["user_id"])
    room = await alice.create_room()
    target = await alice.send(room, "target", "t0")
    sent = []
    for txn, relates_to in (
        ("t1", {"rel_type": "x" * 100, "event_id": target}),
        ("t2", {"rel_type": "m.reference", "event_id": "$" + "e" * 300}),
        ("t3", {"m.in_reply_to": {"event_id": "$" + "e" * 300}}),
        ("t4", {"rel_type": "m.reference", "event_id": target}),
    ):
        out = await alice.ok(
            "PUT",
            f"/rooms/{quote(room)}/send/m.room.message/{txn}",
            json={"msgtype": "m.text", "body": txn, "m.relates_to": relates_to},
        )
        sent.append(out["event_id"])
    related = await alice.ok("GET", v1(room, f"relations/{quote(target)}"))
    assert [e["event_id"] for e in related["chunk"]] == [sent[3]]
