"""Concurrent messages in one room are committed in batches without losing order or dedup."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from sqlalchemy import event as sa_event

from homeserver.errors import MatrixError
from homeserver.handlers import event_creation
from homeserver.storage.events import TxnInfo
from tests.support.http import RawClient
from tests.support.server import RunningServer

MakeUser = Callable[[str], Awaitable[RawClient]]


async def create(
    server: RunningServer, room: str, sender: str, body: str, txn: str, device: str = "DEV"
) -> str | Exception:
    """Send a message through the event creator (as `/send` does); the error, if refused."""
    try:
        event, _ = await server.hs.creator.create_and_send(
            room_id=room,
            type="m.room.message",
            sender=sender,
            content={"msgtype": "m.text", "body": body},
            txn=TxnInfo(sender, device, txn),
        )
        return event.event_id
    except (MatrixError, ConnectionRefusedError) as e:
        return e


async def test_concurrent_sends_form_one_chain(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.join(room)
    sends = [alice.send(room, f"a{i}", f"a{i}") for i in range(40)] + [
        bob.send(room, f"b{i}", f"b{i}") for i in range(40)
    ]
    # The same transaction twice in flight at once yields one event.
    sends += [alice.send(room, "twice", "dup"), alice.send(room, "twice", "dup")]
    ids = await asyncio.gather(*sends)
    assert ids[-1] == ids[-2]
    assert len(set(ids)) == 81
    page = await alice.ok("GET", f"/rooms/{room}/messages", params={"dir": "f", "limit": "200"})
    messages = [e for e in page["chunk"] if e["type"] == "m.room.message"]
    assert len(messages) == 81
    # Every message's only prev_event is the one before it: the DAG is a single chain.
    stored = await server.hs.events.get_events([e["event_id"] for e in messages])
    chain = [stored[e["event_id"]].event for e in messages]
    for before, after in itertools.pairwise(chain):
        assert after.prev_event_ids == [before.event_id]
        assert after.depth == before.depth + 1
    extremities, _ = await server.hs.events.get_extremities_and_depth(room)
    assert extremities == [chain[-1].event_id]


async def test_a_rejected_message_does_not_fail_its_batch(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    await make_user("mallory")
    room = await alice.create_room()
    results = await asyncio.gather(
        create(server, room, alice.user_id, "one", "1"),
        create(server, room, f"@mallory:{server.server_name}", "intruder", "2"),
        create(server, room, alice.user_id, "two", "3"),
    )
    assert isinstance(results[0], str) and isinstance(results[2], str)
    assert isinstance(results[1], MatrixError) and results[1].errcode == "M_FORBIDDEN"
    page = await alice.ok("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "3"})
    assert [e["content"].get("body") for e in page["chunk"][:2]] == ["two", "one"]


@pytest.mark.parametrize("count", [1, 5])
async def test_batched_messages_wake_sync_once(make_user: MakeUser, count: int) -> None:
    alice = await make_user("alice")
    room = await alice.create_room()
    since = (await alice.sync())["next_batch"]
    await asyncio.gather(*(alice.send(room, f"m{i}", f"t{i}") for i in range(count)))
    sync = await alice.sync(since, timeout=1000)
    bodies = [e["content"]["body"] for e in sync["rooms"]["join"][room]["timeline"]["events"]]
    assert sorted(bodies) == sorted(f"m{i}" for i in range(count))


async def alice_and_bob_in_a_room(make_user: MakeUser) -> tuple[RawClient, RawClient, str, str]:
    """Alice's public room with Bob in it, and Bob's sync position after joining."""
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.room_with(bob)
    return alice, bob, room, (await bob.sync())["next_batch"]


async def test_senders_are_answered_before_woken_syncs_compute(
    server: RunningServer, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Computing a woken /sync takes milliseconds of CPU per member; the sender's answer
    # waits for none of them. (The sync still sees the event: it is durable and visible.)
    alice, bob, room, since = await alice_and_bob_in_a_room(make_user)
    order: list[str] = []
    compute = server.hs.sync._compute

    async def recorded(*args: Any) -> Any:
        order.append("a sync computes")
        return await compute(*args)

    poll = asyncio.create_task(bob.sync(since, timeout=5000))
    await asyncio.sleep(0.2)  # bob's long-poll is parked
    monkeypatch.setattr(server.hs.sync, "_compute", recorded)
    event_id = await create(server, room, alice.user_id, "hello", "t1")
    order.append("the sender is answered")
    timeline = (await poll)["rooms"]["join"][room]["timeline"]["events"]
    assert event_id in [e["event_id"] for e in timeline]
    assert order == ["the sender is answered", "a sync computes"]


async def test_batch_writes_push_actions_and_search_in_its_own_commit(
    server: RunningServer, make_user: MakeUser
) -> None:
    alice, bob, room, since = await alice_and_bob_in_a_room(make_user)
    commits = 0
    engine = server.hs.db.engine.sync_engine

    def on_commit(*_: object) -> None:
        nonlocal commits
        commits += 1

    sa_event.listen(engine, "commit", on_commit)
    try:
        sends = [alice.send(room, f"needle {i}", f"n{i}") for i in range(20)]
        await asyncio.gather(*sends)
    finally:
        sa_event.remove(engine, "commit", on_commit)
    # One commit per batch (at worst one per message, plus a presence update), not three
    # per message (event, push actions, search index).
    assert commits <= 22, commits
    sync = await bob.sync(since)
    joined = sync["rooms"]["join"][room]
    assert joined["unread_notifications"]["notification_count"] == 20
    notifications = await bob.ok("GET", "/notifications", params={"limit": "50"})
    assert len(notifications["notifications"]) == 20
    found = await bob.ok(
        "POST", "/search", json={"search_categories": {"room_events": {"search_term": "needle"}}}
    )
    assert found["search_categories"]["room_events"]["count"] == 20


async def test_remembered_authorisation_follows_state_changes(
    server: RunningServer, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.join(room)
    await bob.send(room, "allowed", "b1")
    levels = await alice.ok("GET", f"/rooms/{room}/state/m.room.power_levels")
    await alice.ok("PUT", f"/rooms/{room}/state/m.room.power_levels", json={**levels, "events_default": 50})
    status, body = await bob.request(
        "PUT", f"/rooms/{room}/send/m.room.message/b2", json={"msgtype": "m.text", "body": "denied"}
    )
    assert status == 403, body
    await alice.ok("PUT", f"/rooms/{room}/state/m.room.power_levels", json=levels)
    await bob.send(room, "allowed again", "b3")
    await bob.request("POST", f"/rooms/{room}/leave", json={})
    status, body = await bob.request(
        "PUT", f"/rooms/{room}/send/m.room.message/b4", json={"msgtype": "m.text", "body": "gone"}
    )
    assert status == 403, body
    # Past the API's membership check, the auth rules themselves refuse.
    with pytest.raises(MatrixError) as refused:
        await server.hs.creator.create_and_send(
            room_id=room,
            type="m.room.message",
            sender=bob.user_id,
            content={"msgtype": "m.text", "body": "gone"},
            txn=TxnInfo(bob.user_id, "DEV", "b5"),
        )
    assert refused.value.errcode == "M_FORBIDDEN"


async def test_queued_senders_are_answered_when_the_room_lock_cannot_be_taken(
    server: RunningServer, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL the room lock is a database session: taking it fails while the database
    # is away. The messages queued behind it used to wait for ever (the drain had ended).
    alice = await make_user("alice")
    room = await alice.create_room()
    creator = server.hs.creator
    real_lock = creator.room_lock
    failures = 1

    @asynccontextmanager
    async def flaky_lock(room_id: str) -> AsyncIterator[None]:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionRefusedError("the database is away")
        async with real_lock(room_id):
            yield

    monkeypatch.setattr(creator, "room_lock", flaky_lock)

    def send(body: str) -> Awaitable[str | Exception]:
        return create(server, room, alice.user_id, body, body)

    results = await asyncio.wait_for(asyncio.gather(*(send(f"queued {i}") for i in range(3))), 10)
    assert all(isinstance(r, ConnectionRefusedError) for r in results), results
    # The room is not stuck: the same transaction IDs, retried, are stored once each.
    retried = await asyncio.wait_for(asyncio.gather(*(send(f"queued {i}") for i in range(3))), 10)
    assert all(isinstance(r, str) for r in retried), retried
    page = await alice.ok("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "10"})
    bodies = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
    assert sorted(bodies) == ["queued 0", "queued 1", "queued 2"]


async def test_a_retried_transaction_in_a_batch_of_new_ones(
    server: RunningServer, make_user: MakeUser
) -> None:
    # In one process a batch is written without looking its transaction IDs up; a stored one
    # undoes the write and the batch goes round again with the lookup. Everything in the batch
    # must come out as if it had been looked up first: the retry answered with the stored event,
    # the new message stored once, the refused one refused.
    alice = await make_user("alice")
    await make_user("mallory")
    room = await alice.create_room()
    first = await alice.send(room, "once", "t1")
    device = str((await alice.ok("GET", "/account/whoami"))["device_id"])
    results = await asyncio.gather(
        create(server, room, alice.user_id, "once", "t1", device),
        create(server, room, f"@mallory:{server.server_name}", "intruder", "m1"),
        create(server, room, alice.user_id, "new", "t2", device),
    )
    assert results[0] == first
    assert isinstance(results[1], MatrixError) and results[1].errcode == "M_FORBIDDEN"
    assert isinstance(results[2], str) and results[2] != first
    page = await alice.ok("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "10"})
    bodies = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["new", "once"]


async def test_a_batch_built_on_stale_cached_extremities_is_built_again(
    server: RunningServer, make_user: MakeUser
) -> None:
    """The write checks that every prev_event is still an extremity; if the cache was out of
    date, nothing is written and the batch is built again from the database."""
    alice = await make_user("alice")
    room = await alice.create_room()
    first = await create(server, room, alice.user_id, "one", "1")
    assert isinstance(first, str)
    store = server.hs.events
    cache = store._cache_to_fill(room)
    cache.extremities, cache.depth = ["$not-an-extremity"], 1
    store.cache_state = True  # trust the (now wrong) cache, as one process does
    second = await create(server, room, alice.user_id, "two", "2")
    assert isinstance(second, str), second
    stored = await store.get_event(second)
    assert stored is not None and stored.event.prev_event_ids == [first]
    extremities, _ = await store.get_extremities_and_depth(room)
    assert extremities == [second]


Slow = Callable[..., None]


@pytest.fixture
def slow_gather(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Slow:
    """Senders stay active for a minute; once called, a drain waits up to 5 s for them (or
    as told): the tests below see the waits without depending on how fast this machine is.
    Waits in the setup that saw nothing come are forgotten."""
    monkeypatch.setattr(event_creation, "GATHER_MEMORY_S", 60.0)

    def slow(idle: float = 5.0, most: float = 5.0) -> None:
        monkeypatch.setattr(event_creation, "GATHER_IDLE_S", idle)
        monkeypatch.setattr(event_creation, "GATHER_MAX_S", most)
        server.hs.creator._gather_skips.clear()

    return slow


async def active_senders(server: RunningServer, make_user: MakeUser, *names: str) -> tuple[str, list[str]]:
    users = [await make_user(name) for name in names]
    room = await users[0].create_room(preset="public_chat")
    for user in users[1:]:
        await user.join(room)
    for user in users:
        assert isinstance(await create(server, room, user.user_id, "hello", f"hello-{user.user_id}"), str)
    return room, [user.user_id for user in users]


async def test_a_batch_waits_for_the_rooms_other_active_sender(
    server: RunningServer, make_user: MakeUser, slow_gather: Slow
) -> None:
    room, (alice, bob) = await active_senders(server, make_user, "alice", "bob")
    slow_gather()
    creator = server.hs.creator
    batches = creator.batches
    first = asyncio.create_task(create(server, room, alice, "one", "1"))
    await asyncio.sleep(0.2)
    assert not first.done()  # waiting for bob's next message
    second = await create(server, room, bob, "two", "2")
    assert isinstance(second, str) and isinstance(await first, str)
    assert creator.batches == batches + 1


async def test_a_lone_sender_does_not_wait(
    server: RunningServer, make_user: MakeUser, slow_gather: Slow
) -> None:
    room, (alice,) = await active_senders(server, make_user, "alice")
    slow_gather()
    for i in range(3):
        # Far below the 5 s a wait would take.
        assert isinstance(await asyncio.wait_for(create(server, room, alice, "m", f"m{i}"), 2), str)


async def test_the_wait_ends_when_no_other_message_comes(
    server: RunningServer, make_user: MakeUser, slow_gather: Slow
) -> None:
    room, (alice, _) = await active_senders(server, make_user, "alice", "bob")
    slow_gather(idle=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert isinstance(await asyncio.wait_for(create(server, room, alice, "alone", "alone"), 3), str)
    assert loop.time() - started >= 0.25  # it did wait for bob


async def test_the_wait_is_bounded_while_messages_keep_coming(
    server: RunningServer, make_user: MakeUser, slow_gather: Slow
) -> None:
    # Eight active senders; only bob sends again, every 100 ms, so no gap outlasts 5 s. Six
    # of his messages would still leave the queue short of 8: alice's message goes within
    # GATHER_MAX_S (0.2 s here) all the same, well before bob's last (0.7 s: slack for a
    # loaded machine's commit).
    names = ["alice", "bob", *(f"quiet{i}" for i in range(6))]
    room, (alice, bob, *_) = await active_senders(server, make_user, *names)
    slow_gather(most=0.2)
    first = asyncio.create_task(create(server, room, alice, "first", "first"))
    more = []
    for i in range(6):
        await asyncio.sleep(0.1)
        more.append(asyncio.create_task(create(server, room, bob, f"b{i}", f"b{i}")))
    await asyncio.sleep(0.1)
    assert first.done() and isinstance(first.result(), str)
    assert all(isinstance(r, str) for r in await asyncio.gather(*more))

async def test_senders_answering_each_other_do_not_wait_every_time(
    server: RunningServer, make_user: MakeUser, slow_gather: Slow
) -> None:
    # Two bots in a ping-pong: each message is what the other waits for before it sends, so
    # a wait for the other sender sees nothing come. After one such wait the next drains
    # skip waiting (then 2, 4 ...).
    room, (alice, bob) = await active_senders(server, make_user, "alice", "bob")
    slow_gather(idle=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert isinstance(await create(server, room, alice, "ping", "p0"), str)
    assert loop.time() - started >= 0.25  # the one fruitless wait
    started = loop.time()
    for i in range(1, 4):
        sender = bob if i % 2 else alice
        assert isinstance(await create(server, room, sender, "pong", f"p{i}"), str)
    # Three more waits would take 0.9 s; the skips leave at most one (skip 1, wait, skip 2).
    assert loop.time() - started < 0.6


async def test_batches_are_counted_in_metrics(
    server: RunningServer, make_user: MakeUser, http: aiohttp.ClientSession
) -> None:
    alice = await make_user("alice")
    room = await alice.create_room()
    await asyncio.gather(*(alice.send(room, f"m{i}", f"m{i}") for i in range(5)))
    async with http.get(server.base_url + "/metrics") as resp:
        text = await resp.text()
    counts = {
        line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("sotto_")
    }
    assert counts["sotto_batched_messages_total"] == 5
    assert 1 <= counts["sotto_message_batches_total"] <= 5
