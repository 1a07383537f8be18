"""Push rules, unread counts (per room and per thread), /notifications and pushers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
from mautrix.api import Method
from mautrix.client import Client
from mautrix.types import PushActionType, PushRuleKind, PushRuleScope, UserID
from nio import AsyncClient, RoomSendResponse, SyncResponse

from homeserver.handlers.cs_services import CS_KEY
from homeserver.storage.push import PushAction
from tests.support.http import RawClient
from tests.support.nio_clients import nio_client
from tests.support.server import RunningServer

SCOPE = PushRuleScope("global")
CONTENT = PushRuleKind("content")
NOTIFY = PushActionType("notify")
THREAD_FILTER = '{"room":{"timeline":{"unread_thread_notifications":true}}}'


@asynccontextmanager
async def raw_clients(server: RunningServer, *names: str) -> AsyncIterator[list[RawClient]]:
    async with aiohttp.ClientSession() as session:
        clients = []
        for name in names:
            login = await server.login(name)
            clients.append(RawClient(session, server.base_url, login["access_token"], login["user_id"]))
        yield clients


async def send(client: RawClient, room_id: str, content: dict[str, Any], txn: str) -> str:
    out = await client.ok("PUT", f"/rooms/{quote(room_id)}/send/m.room.message/{txn}", json=content)
    return str(out["event_id"])


async def test_default_ruleset_is_served_and_synced(server: RunningServer) -> None:
    async with raw_clients(server, "alice") as (alice,):
        rules = (await alice.ok("GET", "/pushrules/"))["global"]
        override_ids = [r["rule_id"] for r in rules["override"]]
        assert override_ids[0] == ".m.rule.master"
        for rule_id in (".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.suppress_edits",
                        ".m.rule.tombstone", ".m.rule.reaction"):
            assert rule_id in override_ids
        underride_ids = [r["rule_id"] for r in rules["underride"]]
        for rule_id in (".m.rule.room_one_to_one", ".m.rule.encrypted", ".m.rule.message", ".m.rule.call"):
            assert rule_id in underride_ids
        assert all(r["default"] for r in rules["underride"])
        synced = await alice.sync()
        push_rules = [e for e in synced["account_data"]["events"] if e["type"] == "m.push_rules"]
        assert push_rules and push_rules[0]["content"]["global"]["override"][0]["rule_id"] == ".m.rule.master"


async def test_highlight_on_display_name_mention_and_read_receipt_clears(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "bob") as bob, \
            nio_client(server, "carol") as carol:
        room_id = (await alice.room_create(invite=[bob.user_id, carol.user_id])).room_id
        await bob.join(room_id)
        await carol.join(room_id)
        await alice.sync()
        await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "just chatting"})
        last = await bob.room_send(room_id, "m.room.message",
                                   {"msgtype": "m.text", "body": "hey alice, look at this"})
        resp = await alice.sync(timeout=1000)
        assert isinstance(resp, SyncResponse)
        counts = resp.rooms.join[room_id].unread_notifications
        assert counts.notification_count == 2
        assert counts.highlight_count == 1

        assert isinstance(last, RoomSendResponse)
        await alice.room_read_markers(room_id, last.event_id, last.event_id)
        resp = await alice.sync(timeout=1000)
        assert isinstance(resp, SyncResponse)
        counts = resp.rooms.join[room_id].unread_notifications
        assert (counts.notification_count, counts.highlight_count) == (0, 0)


async def test_thread_has_its_own_unread_count(server: RunningServer) -> None:
    async with raw_clients(server, "alice", "bob", "carol") as (alice, bob, carol):
        room_id = await alice.create_room(preset="public_chat")
        for c in (bob, carol):
            await c.join(room_id)
        first = await alice.sync(filter=THREAD_FILTER)
        root = await send(bob, room_id, {"msgtype": "m.text", "body": "thread root"}, "t1")
        for i in range(2):
            await send(bob, room_id, {"msgtype": "m.text", "body": f"in thread {i}",
                                      "m.relates_to": {"rel_type": "m.thread", "event_id": root}}, f"t2{i}")
        synced = await alice.sync(since=first["next_batch"], filter=THREAD_FILTER)
        room = synced["rooms"]["join"][room_id]
        assert room["unread_notifications"]["notification_count"] == 1
        assert room["unread_thread_notifications"][root]["notification_count"] == 2

        # Without the filter option, all notifications count towards the room.
        plain = await alice.sync(since=first["next_batch"])
        assert plain["rooms"]["join"][room_id]["unread_notifications"]["notification_count"] == 3

        # A threaded receipt clears the thread only.
        thread_events = await alice.ok("GET", f"/_matrix/client/v1/rooms/{quote(room_id)}/relations/"
                                              f"{quote(root)}/m.thread")
        latest = thread_events["chunk"][0]["event_id"]
        await alice.ok("POST", f"/rooms/{quote(room_id)}/receipt/m.read/{quote(latest)}",
                       json={"thread_id": root})
        synced = await alice.sync(since=synced["next_batch"], filter=THREAD_FILTER)
        room = synced["rooms"]["join"][room_id]
        assert room["unread_notifications"]["notification_count"] == 1
        assert root not in room["unread_thread_notifications"]


async def test_push_actions_committed_after_their_event_reach_the_next_sync(server: RunningServer) -> None:
    # Events that are not group-committed messages (state, remote events) get their push
    # actions in a transaction after the event's own. A sync between the two commits has
    # the event; the next one must still notice the room's new count, with no new event.
    async with raw_clients(server, "alice", "bob") as (alice, bob):
        room_id = await alice.create_room(preset="public_chat")
        await bob.join(room_id)
        # A topic change notifies nobody by default; its push action is written here by hand.
        topic = await alice.ok("PUT", f"/rooms/{quote(room_id)}/state/m.room.topic", json={"topic": "t"})
        since = (await bob.sync())["next_batch"]
        stored = await server.hs.events.get_event(topic["event_id"])
        assert stored is not None
        actions = server.runner.app[CS_KEY].push.actions
        late = PushAction(
            bob.user_id, stored.event.event_id, room_id, "main", stored.stream_id, False, ["notify"], 0
        )
        await actions.add([late])
        synced = await bob.sync(since=since)
        room = synced["rooms"]["join"][room_id]
        assert room["timeline"]["events"] == []
        assert room["unread_notifications"]["notification_count"] == 1
        # Nothing changed since: the room is not repeated.
        again = await bob.sync(since=synced["next_batch"])
        assert room_id not in again.get("rooms", {}).get("join", {})


async def test_notifications_and_rule_changes(server: RunningServer) -> None:
    async with raw_clients(server, "alice", "bob") as (alice, bob):
        room_id = await alice.create_room(preset="public_chat")
        await bob.join(room_id)
        await send(bob, room_id, {"msgtype": "m.text", "body": "hello"}, "n1")
        await send(bob, room_id, {"msgtype": "m.text", "body": "ping",
                                  "m.mentions": {"user_ids": [alice.user_id]}}, "n2")
        listed = await alice.ok("GET", "/notifications")
        assert [n["event"]["content"]["body"] for n in listed["notifications"]] == ["ping", "hello"]
        assert all(n["read"] is False and n["room_id"] == room_id for n in listed["notifications"])
        highlights = await alice.ok("GET", "/notifications", params={"only": "highlight"})
        assert [n["event"]["content"]["body"] for n in highlights["notifications"]] == ["ping"]

        # Mute the room with a room rule: new messages no longer notify.
        await alice.ok("PUT", f"/pushrules/global/room/{quote(room_id)}", json={"actions": []})
        await send(bob, room_id, {"msgtype": "m.text", "body": "muted"}, "n3")
        listed = await alice.ok("GET", "/notifications")
        assert "muted" not in [n["event"]["content"]["body"] for n in listed["notifications"]]
        rule = await alice.ok("GET", f"/pushrules/global/room/{quote(room_id)}")
        assert rule == {"rule_id": room_id, "default": False, "enabled": True, "actions": []}

        # Disable and re-enable a server-default rule; change its actions.
        await alice.ok("PUT", "/pushrules/global/override/.m.rule.master/enabled", json={"enabled": True})
        master = await alice.ok("GET", "/pushrules/global/override/.m.rule.master/enabled")
        assert master == {"enabled": True}
        await alice.ok("PUT", "/pushrules/global/underride/.m.rule.message/actions", json={"actions": []})
        message = await alice.ok("GET", "/pushrules/global/underride/.m.rule.message/actions")
        assert message == {"actions": []}

        status, body = await alice.request("PUT", "/pushrules/global/override/.custom", json={"actions": []})
        assert status == 400
        status, body = await alice.request("DELETE", "/pushrules/global/room/!nope:x")
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"
        status, body = await alice.request("PUT", "/pushrules/global/content/cake",
                                           json={"actions": ["notify"], "pattern": "cake"},
                                           params={"before": "missing"})
        assert status == 404, body


async def test_mautrix_push_rule_crud_and_pushers(server: RunningServer) -> None:
    await server.register("dora")
    client = Client(mxid=UserID(f"@dora:{server.server_name}"), base_url=server.base_url)
    try:
        await client.login(password="password")
        await client.set_push_rule(SCOPE, CONTENT, "cake",
                                   actions=[NOTIFY], pattern="cake")
        await client.set_push_rule(SCOPE, CONTENT, "tea",
                                   actions=[NOTIFY], pattern="tea", before="cake")
        rules = await client.api.request(Method.GET, "/_matrix/client/v3/pushrules/")
        content_ids = [r["rule_id"] for r in rules["global"]["content"]]
        assert content_ids[:2] == ["tea", "cake"] and content_ids[-1] == ".m.rule.contains_user_name"
        rule = await client.get_push_rule(SCOPE, CONTENT, "cake")
        assert rule.pattern == "cake"
        await client.remove_push_rule(SCOPE, CONTENT, "cake")

        pusher = {"app_id": "org.example.app", "pushkey": "abc", "kind": "http", "app_display_name": "App",
                  "device_display_name": "Phone", "lang": "en",
                  "data": {"url": "https://push.example.org/_matrix/push/v1/notify"}}
        await client.api.request(Method.POST, "/_matrix/client/v3/pushers/set", pusher)
        listed = await client.api.request(Method.GET, "/_matrix/client/v3/pushers")
        assert [p["pushkey"] for p in listed["pushers"]] == ["abc"]
        await client.api.request(Method.POST, "/_matrix/client/v3/pushers/set",
                                 {"app_id": "org.example.app", "pushkey": "abc", "kind": None})
        assert (await client.api.request(Method.GET, "/_matrix/client/v3/pushers"))["pushers"] == []
    finally:
        await client.api.session.close()


async def test_nio_client_sees_counts_in_one_to_one(server: RunningServer) -> None:
    async with nio_client(server, "erin") as erin, nio_client(server, "finn") as finn:
        room_id = (await erin.room_create(invite=[finn.user_id], is_direct=True)).room_id
        await finn.join(room_id)
        await erin.sync()
        await finn.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
        await wait_for_count(erin, room_id, 1)


async def wait_for_count(client: AsyncClient, room_id: str, expected: int) -> None:
    for _ in range(3):
        resp = await client.sync(timeout=1000)
        assert isinstance(resp, SyncResponse)
        room = resp.rooms.join.get(room_id)
        if room is not None and room.unread_notifications.notification_count == expected:
            return
    raise AssertionError("count never reached")
