"""Thread subscriptions (MSC4306 and MSC4308's sliding sync extension, unstable names, as
Synapse 1.163 serves them behind msc4306_enabled), over HTTP: the subscription endpoints and
their errors, the default `postcontent` push rules (a thread reply notifies the thread's
subscribers, not the others; the main timeline is unaffected), the sliding sync extension
(shape, limit and `prev_batch`, carried-over limit, long-poll wake-up), the pagination
endpoint, and all of it absent when off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.api.thread_subscriptions import THREAD_SUBSCRIPTIONS_KEY
from homeserver.handlers.cs_services import CS_KEY
from homeserver.handlers.push_eval import RoomContext, evaluate, rule_matches
from homeserver.handlers.push_rules import build_ruleset, strip_actions
from homeserver.storage.thread_subscriptions import Orderings, ThreadSubscriptionStore, skip_automatic
from homeserver.sync.sliding.config import RequiredState, RoomConfig
from homeserver.sync.sliding.connections import Position, RoomSent, decode, encode
from tests.integration.test_sliding_sync import a_list, sliding
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

MSC4306 = "/_matrix/client/unstable/io.element.msc4306"
PAGES = "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions"
EXT = "io.element.msc4308.thread_subscriptions"
NOT_IN_THREAD = "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD"
CONFLICT = "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION"
UNSUBSCRIBED_RULE = ".io.element.msc4306.rule.unsubscribed_thread"
SUBSCRIBED_RULE = ".io.element.msc4306.rule.subscribed_thread"


@pytest.fixture
async def srv(tmp_path: object) -> AsyncIterator[RunningServer]:
    async with run_server(str(tmp_path), thread_subscriptions={"enabled": True}) as running:
        yield running


async def client(srv: RunningServer, http: aiohttp.ClientSession, name: str) -> RawClient:
    user_id = await srv.register(name)
    token, _ = await srv.hs.auth.create_session(user_id, None, None)
    return RawClient(http, srv.base_url, token, user_id)


def sub_path(room: str, root: str) -> str:
    return f"{MSC4306}/rooms/{quote(room)}/thread/{quote(root)}/subscription"


async def reply(c: RawClient, room: str, root: str, body: str, txn: str, **content: Any) -> str:
    out = await c.ok(
        "PUT",
        f"/rooms/{quote(room)}/send/m.room.message/{txn}",
        json={
            "msgtype": "m.text",
            "body": body,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
            **content,
        },
    )
    return str(out["event_id"])


async def notified(c: RawClient) -> dict[str, list[Any]]:
    """The bodies (or types) the user was notified of, with their actions."""
    listed = await c.ok("GET", "/notifications")
    return {
        n["event"]["content"].get("body", n["event"]["type"]): n["actions"] for n in listed["notifications"]
    }


async def test_off_by_default(tmp_path: object, http: aiohttp.ClientSession) -> None:
    async with run_server(str(tmp_path)) as off:
        alice = await client(off, http, "alice")
        bob = await client(off, http, "bob")
        room = await alice.room_with(bob)
        root = await alice.send(room, "root", "r")
        versions = await RawClient(http, off.base_url).ok("GET", "/_matrix/client/versions")
        assert versions["unstable_features"]["org.matrix.msc4306"] is False
        for method in ("GET", "PUT", "DELETE"):
            status, body = await alice.request(method, sub_path(room, root), json={})
            assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
        status, body = await alice.request("GET", PAGES, params={"dir": "b"})
        assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
        rules = (await alice.ok("GET", "/pushrules/"))["global"]
        assert "postcontent" not in rules
        out = await sliding(
            alice, {"lists": {"all": a_list([[0, 9]], 1)}, "extensions": {EXT: {"enabled": True}}}
        )
        assert EXT not in out["extensions"]
        # A thread reply notifies as before (.m.rule.message).
        await reply(alice, room, root, "in thread", "t1")
        assert "in thread" in await notified(bob)


async def test_subscription_endpoints(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await client(srv, http, "alice")
    bob = await client(srv, http, "bob")
    room = await alice.room_with(bob)
    root = await alice.send(room, "root", "r")
    first = await reply(alice, room, root, "first", "t1")
    plain = await alice.send(room, "not in the thread", "p")
    versions = await RawClient(http, srv.base_url).ok("GET", "/_matrix/client/versions")
    assert versions["unstable_features"]["org.matrix.msc4306"] is True

    # Malformed IDs (before authentication, as Synapse), unauthenticated, unknown roots.
    for bad_room, bad_root in (("room", root), (room, "event")):
        status, body = await bob.request("GET", sub_path(bad_room, bad_root))
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = await RawClient(http, srv.base_url).request("GET", sub_path(room, root))
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    for method in ("GET", "PUT", "DELETE"):
        status, body = await bob.request(method, sub_path(room, "$unknown:nowhere"), json={})
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), method
    # A root of another room, and one in a room the user cannot see, are unknown too.
    other = await alice.create_room()
    hidden = await alice.send(other, "private", "h")
    for target_room in (room, other):
        status, body = await bob.request("PUT", sub_path(target_room, hidden), json={})
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

    # Not subscribed yet.
    status, body = await bob.request("GET", sub_path(room, root))
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

    # Manual subscription, idempotent; an automatic one does not downgrade it.
    assert await bob.ok("PUT", sub_path(room, root), json={}) == {}
    assert await bob.ok("GET", sub_path(room, root)) == {"automatic": False}
    before = (await bob.ok("GET", PAGES, params={"dir": "b"}))["subscribed"][room][root]["bump_stamp"]
    assert await bob.ok("PUT", sub_path(room, root), json={"automatic": None}) == {}
    assert await bob.ok("PUT", sub_path(room, root), json={"automatic": first}) == {}
    assert await bob.ok("GET", sub_path(room, root)) == {"automatic": False}
    after = (await bob.ok("GET", PAGES, params={"dir": "b"}))["subscribed"][room][root]["bump_stamp"]
    assert after == before  # no change was written

    # The automatic cause: malformed, unknown, not in this thread.
    for bad in (5, "nope", ["$x:y"]):
        status, body = await bob.request("PUT", sub_path(room, root), json={"automatic": bad})
        assert (status, body["errcode"]) == (400, "M_BAD_JSON"), bad
    status, body = await bob.request("PUT", sub_path(room, root), json={"automatic": "$unknown:nowhere"})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    for cause in (plain, root):
        status, body = await bob.request("PUT", sub_path(room, root), json={"automatic": cause})
        assert (status, body["errcode"]) == (400, NOT_IN_THREAD)
    status, body = await bob.request("PUT", sub_path(room, root), data=b"")
    assert (status, body["errcode"]) == (400, "M_NOT_JSON")

    # Unsubscribe (twice: a no-op); then an automatic subscription caused by an event from
    # before the unsubscription is refused, one from after it is made.
    assert await bob.ok("DELETE", sub_path(room, root)) == {}
    assert await bob.ok("DELETE", sub_path(room, root)) == {}
    status, body = await bob.request("GET", sub_path(room, root))
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await bob.request("PUT", sub_path(room, root), json={"automatic": first})
    assert (status, body["errcode"]) == (409, CONFLICT)
    status, body = await bob.request("GET", sub_path(room, root))
    assert status == 404
    later = await reply(alice, room, root, "later", "t2")
    assert await bob.ok("PUT", sub_path(room, root), json={"automatic": later}) == {}
    assert await bob.ok("GET", sub_path(room, root)) == {"automatic": True}
    # A manual subscription replaces an automatic one.
    assert await bob.ok("PUT", sub_path(room, root), json={}) == {}
    assert await bob.ok("GET", sub_path(room, root)) == {"automatic": False}

    # An automatic first subscription; the root need not have replies (as Synapse).
    lonely = await alice.send(room, "no replies yet", "l")
    assert await bob.ok("PUT", sub_path(room, lonely), json={}) == {}
    root2 = await alice.send(room, "root 2", "r2")
    cause = await reply(alice, room, root2, "x", "t3")
    assert await bob.ok("PUT", sub_path(room, root2), json={"automatic": cause}) == {}
    assert await bob.ok("GET", sub_path(room, root2)) == {"automatic": True}
    # Subscriptions are per user.
    status, _ = await alice.request("GET", sub_path(room, root2))
    assert status == 404
    # A change has a stream position; a no-op has none (and wakes nobody).
    handler = srv.runner.app[THREAD_SUBSCRIPTIONS_KEY]
    root3 = await alice.send(room, "root 3", "r3")
    made = await handler.subscribe(alice.user_id, room, root3, None)
    assert isinstance(made, int) and made <= srv.hs.db.current_stream_id
    assert await handler.subscribe(alice.user_id, room, root3, None) is None
    assert isinstance(await handler.unsubscribe(alice.user_id, room, root3), int)
    assert await handler.unsubscribe(alice.user_id, room, root3) is None


def test_automatic_after_unsubscription_ordering() -> None:
    at = Orderings(stream=100, depth=50)
    assert skip_automatic(Orderings(90, 45), at)  # earlier on the stream
    assert skip_automatic(Orderings(100, 50), at)
    assert not skip_automatic(Orderings(101, 40), at)  # later on the stream, whatever its depth
    # Backfilled causes (negative positions) are compared by depth.
    assert skip_automatic(Orderings(-5, 50), at)
    assert not skip_automatic(Orderings(-5, 51), at)
    # An unsubscription made when the room only had backfilled events: by depth only.
    assert not skip_automatic(Orderings(3, 10), Orderings(-2, 50))


async def test_push_rules_and_notifications(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await client(srv, http, "alice")
    bob = await client(srv, http, "bob")
    carol = await client(srv, http, "carol")
    room = await alice.room_with(bob, carol)

    # The default rules, where Synapse puts them: postcontent, after content, before room.
    rules = (await bob.ok("GET", "/pushrules/"))["global"]
    assert list(rules).index("postcontent") == list(rules).index("content") + 1
    assert rules["postcontent"] == [
        {
            "rule_id": UNSUBSCRIBED_RULE,
            "conditions": [{"kind": "io.element.msc4306.thread_subscription", "subscribed": False}],
            "actions": [],
            "default": True,
            "enabled": True,
        },
        {
            "rule_id": SUBSCRIBED_RULE,
            "conditions": [{"kind": "io.element.msc4306.thread_subscription", "subscribed": True}],
            "actions": ["notify", {"set_tweak": "sound", "value": "default"}],
            "default": True,
            "enabled": True,
        },
    ]
    one = await bob.ok("GET", f"/pushrules/global/postcontent/{SUBSCRIBED_RULE}")
    assert one["rule_id"] == SUBSCRIBED_RULE
    status, body = await bob.request(
        "PUT", "/pushrules/global/postcontent/mine", json={"conditions": [], "actions": ["notify"]}
    )
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")

    # Count the subscriber reads push makes.
    store = srv.runner.app[CS_KEY].push.thread_subscriptions
    assert store is not None
    reads: list[tuple[str, str]] = []
    real = store.subscribers

    async def counting(room_id: str, root_id: str) -> frozenset[str]:
        reads.append((room_id, root_id))
        return await real(room_id, root_id)

    store.subscribers = counting  # type: ignore[method-assign]

    root = await alice.send(room, "root", "r")
    assert await bob.ok("PUT", sub_path(room, root), json={}) == {}
    assert reads == []  # main-timeline messages read nothing
    first = await reply(alice, room, root, "in thread", "t1")
    assert reads == [(room, root)]  # one read, for both recipients
    # A batch of replies to one thread reads its subscribers once.
    pdus = await srv.hs.events.get_pdus([first, root])
    reads.clear()
    await srv.runner.app[CS_KEY].push.prepare_messages([pdus[first], pdus[first]])
    assert reads == [(room, root)]
    bob_seen, carol_seen = await notified(bob), await notified(carol)
    assert bob_seen["in thread"] == ["notify", {"set_tweak": "sound", "value": "default"}]
    assert "in thread" not in carol_seen
    # The main timeline is unaffected: both are notified (.m.rule.message).
    assert bob_seen["root"] == ["notify"] and carol_seen["root"] == ["notify"]
    await alice.send(room, "main again", "m")
    assert "main again" in await notified(bob) and "main again" in await notified(carol)
    # A mention in the thread still notifies (override rules come first).
    await reply(alice, room, root, "hey carol", "t2", **{"m.mentions": {"user_ids": [carol.user_id]}})
    assert "hey carol" in await notified(carol)

    # Unsubscribed: bob is no longer notified of replies.
    assert await bob.ok("DELETE", sub_path(room, root)) == {}
    await reply(alice, room, root, "after unsubscribing", "t3")
    assert "after unsubscribing" not in await notified(bob)

    # Without the unsubscribed rule, carol gets thread replies again (as before MSC4306).
    await carol.ok(
        "PUT", f"/pushrules/global/postcontent/{UNSUBSCRIBED_RULE}/enabled", json={"enabled": False}
    )
    await reply(alice, room, root, "for carol", "t4")
    assert "for carol" in await notified(carol)

    # Relations other than m.thread: their thread is looked up only when a rule asks. With
    # reactions not suppressed, a reaction in the thread notifies its subscriber only.
    assert await bob.ok("PUT", sub_path(room, root), json={}) == {}
    target = await reply(alice, room, root, "react to me", "t5")
    for user in (bob, carol):
        await user.ok("PUT", "/pushrules/global/override/.m.rule.reaction/enabled", json={"enabled": False})
    await carol.ok(
        "PUT", f"/pushrules/global/postcontent/{UNSUBSCRIBED_RULE}/enabled", json={"enabled": True}
    )
    reads.clear()
    await alice.ok(
        "PUT",
        f"/rooms/{quote(room)}/send/m.reaction/x1",
        json={"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "👍"}},
    )
    assert reads == [(room, root)]
    assert "m.reaction" in await notified(bob)
    assert "m.reaction" not in await notified(carol)
    # A reaction in the main timeline: no thread, no subscriber read.
    main = await alice.send(room, "main target", "mt")
    reads.clear()
    await alice.ok(
        "PUT",
        f"/rooms/{quote(room)}/send/m.reaction/x2",
        json={"m.relates_to": {"rel_type": "m.annotation", "event_id": main, "key": "👍"}},
    )
    assert reads == []


async def test_sliding_sync_extension(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await client(srv, http, "alice")
    bob = await client(srv, http, "bob")
    room = await alice.room_with(bob)
    roots = [await alice.send(room, f"root {i}", f"r{i}") for i in range(3)]
    for root in roots:
        assert await bob.ok("PUT", sub_path(room, root), json={}) == {}
    lists = {"all": a_list([[0, 9]], 1)}

    # First request: everything, latest first cut by the limit, with prev_batch for the gap.
    first = await sliding(bob, {"lists": lists, "extensions": {EXT: {"enabled": True, "limit": 2}}})
    ext = first["extensions"][EXT]
    assert set(ext) == {"subscribed", "prev_batch"}
    assert set(ext["subscribed"][room]) == set(roots[1:])
    stamps = [ext["subscribed"][room][r]["bump_stamp"] for r in roots[1:]]
    assert stamps == sorted(stamps) and all(isinstance(s, int) for s in stamps)
    assert ext["subscribed"][room][roots[1]] == {"automatic": False, "bump_stamp": stamps[0]}
    assert ext["prev_batch"] == f"ts{stamps[0] - 1}"
    # The gap, through the pagination endpoint, up to the connection's pos.
    page = await bob.ok("GET", PAGES, params={"dir": "b", "from": ext["prev_batch"], "to": "ts0"})
    assert list(page["subscribed"][room]) == [roots[0]] and "end" not in page

    # Nothing new: no extension in the response.
    idle = await sliding(bob, {"lists": lists}, first["pos"])
    assert EXT not in idle["extensions"]

    # The long-poll wakes on a change (the request leaves the config out: it stays on).
    async def unsubscribe_soon() -> None:
        await asyncio.sleep(0.3)
        assert await bob.ok("DELETE", sub_path(room, roots[0])) == {}

    task = asyncio.create_task(unsubscribe_soon())
    started = asyncio.get_running_loop().time()
    woken = await sliding(bob, {"lists": lists}, idle["pos"], timeout=20_000)
    await task
    assert asyncio.get_running_loop().time() - started < 10
    change = woken["extensions"][EXT]
    assert set(change) == {"unsubscribed"}
    assert set(change["unsubscribed"][room][roots[0]]) == {"bump_stamp"}

    # The limit (2) carries over to requests that leave it out: the latest two of three
    # changes, and the gap (no-op requests change nothing).
    for root in roots:
        await bob.ok("PUT", sub_path(room, root), json={"automatic": None})
    await bob.ok("DELETE", sub_path(room, roots[1]))
    await bob.ok("DELETE", sub_path(room, roots[2]))
    carried = await sliding(bob, {"lists": lists, "extensions": {EXT: {"enabled": True}}}, woken["pos"])
    ext = carried["extensions"][EXT]
    assert set(ext) == {"unsubscribed", "prev_batch"}
    assert set(ext["unsubscribed"][room]) == {roots[1], roots[2]}
    # The pos of a sliding sync response bounds pagination from below too.
    page = await bob.ok("GET", PAGES, params={"dir": "b", "from": ext["prev_batch"], "to": woken["pos"]})
    assert list(page) == ["subscribed"] and list(page["subscribed"][room]) == [roots[0]]

    # Turned off: changes are not sent; on again (fresh), the latest of each thread.
    off = await sliding(bob, {"lists": lists, "extensions": {EXT: {"enabled": False}}}, carried["pos"])
    await bob.ok("PUT", sub_path(room, roots[1]), json={})
    still_off = await sliding(bob, {"lists": lists}, off["pos"])
    assert EXT not in still_off["extensions"]
    again = await sliding(
        bob, {"lists": lists, "extensions": {EXT: {"enabled": True, "limit": 10}}}, still_off["pos"]
    )
    ext = again["extensions"][EXT]
    assert set(ext["subscribed"][room]) == {roots[0], roots[1]}
    assert set(ext["unsubscribed"][room]) == {roots[2]}
    assert "prev_batch" not in ext

    # A malformed limit: 400.
    status, body = await bob.request(
        "POST",
        "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
        json={"lists": lists, "extensions": {EXT: {"enabled": True, "limit": "many"}}},
    )
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")


def test_compiled_rules_answer_as_the_interpreter_in_and_out_of_threads() -> None:
    me, other = "@me:ex.org", "@other:ex.org"
    ruleset = build_ruleset(me, [], {}, thread_subscriptions=True)
    room = RoomContext(5, {me: "me", other: "other"})
    events = [
        {"type": "m.room.message", "sender": other, "content": {"msgtype": "m.text", "body": "hi"}},
        {"type": "m.reaction", "sender": other, "content": {}},
        {"type": "m.room.message", "sender": other, "content": {"body": "hey me"}},
    ]
    contexts = [
        room,
        RoomContext(5, room.display_names, thread_subscribers=frozenset({me})),
        RoomContext(5, room.display_names, thread_subscribers=frozenset({other})),
    ]
    for ctx in contexts:
        for event in events:
            expected = None
            for kind, rule in ruleset.ordered():
                if rule.get("enabled", True) and rule_matches(kind, rule, event, me, ctx):
                    expected = strip_actions(rule["actions"])
                    break
            assert evaluate(ruleset, event, me, ctx, {}) == expected, (ctx, event)
    message = events[0]
    assert evaluate(ruleset, message, me, contexts[0]) == ["notify"]  # outside threads
    assert evaluate(ruleset, message, me, contexts[1]) == [
        "notify",
        {"set_tweak": "sound", "value": "default"},
    ]
    assert evaluate(ruleset, message, me, contexts[2]) == []
    # A relation whose thread is not known yet: the rule asks for it and does not match.
    unknown = RoomContext(5, room.display_names, thread_unknown=True)
    assert evaluate(ruleset, message, me, unknown) == ["notify"] and unknown.thread_wanted


def test_position_keeps_the_limit() -> None:
    config = RoomConfig(1, RequiredState(frozenset()))
    position = Position(9, 1, {"!a:test": RoomSent(8, "join", config)}, {}, frozenset({EXT}), thread_limit=7)
    assert decode(encode(position)).thread_limit == 7
    assert decode(encode(Position(9, 1))).thread_limit is None


async def test_pagination_endpoint(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await client(srv, http, "alice")
    room = await alice.create_room()
    roots = [await alice.send(room, f"root {i}", f"r{i}") for i in range(5)]
    for root in roots:
        await alice.ok("PUT", sub_path(room, root), json={})
    await alice.ok("DELETE", sub_path(room, roots[4]))

    whole = await alice.ok("GET", PAGES, params={"dir": "b", "limit": "10"})
    assert set(whole) == {"subscribed", "unsubscribed"}
    assert set(whole["subscribed"][room]) == set(roots[:4])
    assert all(set(s) == {"automatic", "bump_stamp"} for s in whole["subscribed"][room].values())
    assert list(whole["unsubscribed"][room]) == [roots[4]]
    # Pages of two, newest first, each `end` the next page's `from`.
    seen: list[str] = []
    params = {"dir": "b", "limit": "2"}
    for _ in range(5):
        page = await alice.ok("GET", PAGES, params=params)
        batch = {**page.get("subscribed", {}).get(room, {}), **page.get("unsubscribed", {}).get(room, {})}
        seen = sorted(batch, key=lambda r: batch[r]["bump_stamp"]) + seen
        if "end" not in page:
            break
        params = {**params, "from": page["end"]}
    assert seen == roots

    for params, code in (
        ({}, "M_MISSING_PARAM"),
        ({"dir": "f"}, "M_INVALID_PARAM"),
        ({"dir": "b", "limit": "0"}, "M_INVALID_PARAM"),
        ({"dir": "b", "limit": "-1"}, "M_INVALID_PARAM"),
        ({"dir": "b", "limit": "x"}, "M_INVALID_PARAM"),
        ({"dir": "b", "from": "nope"}, "M_INVALID_PARAM"),
        ({"dir": "b", "to": "nope"}, "M_INVALID_PARAM"),
    ):
        status, body = await alice.request("GET", PAGES, params=params)
        assert (status, body["errcode"]) == (400, code), params


async def test_deactivation_drops_subscriptions(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await client(srv, http, "alice")
    bob = await client(srv, http, "bob")
    room = await alice.room_with(bob)
    root = await alice.send(room, "root", "r")
    await bob.ok("PUT", sub_path(room, root), json={})
    store = ThreadSubscriptionStore(srv.hs.db)
    assert bob.user_id in await store.subscribers(room, root)
    await srv.hs.accounts.deactivate(bob.user_id)
    assert bob.user_id not in await store.subscribers(room, root)
