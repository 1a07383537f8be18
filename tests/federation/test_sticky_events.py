"""Sticky events (MSC4354, unstable names) over federation: between Sotto servers, pushed
to a server that joins later, soft-failed ones accepted once the room's state lets them
through, a backlog that never loses one, and both ways with a real Synapse."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from sqlalchemy import select

from bridge.sticky import unsendable
from homeserver.storage import sticky_events
from homeserver.storage.cs_schema import sticky_events as sticky_table
from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    has_membership,
    joined_pair,
    room_bodies,
    wait_for,
)
from tests.federation.synapse import SynapseServer
from tests.support.server import RunningServer

MEMBER = "org.matrix.msc4143.rtc.member"
LOCKED = "org.example.locked"
DURATION = 600_000
# The timeline leaves sticky events' types out: /sync's sticky section must carry them.
STICKY_ONLY = json.dumps({"room": {"timeline": {"limit": 5, "not_types": [MEMBER, LOCKED]}}})


async def send_sticky(client: Client, room_id: str, key: str, event_type: str = MEMBER) -> str:
    path = f"/rooms/{quote(room_id)}/send/{event_type}/{key}-{time.monotonic_ns()}"
    body = {"msc4354_sticky_key": key, "call_id": ""}
    query: dict[str, Any] = {sticky_events.PARAM: str(DURATION)}
    out = await client.call("PUT", path, body, **query)
    return str(out["event_id"])


class Seen:
    """Everything one client's /sync delivered in a room: sticky section and timeline."""

    def __init__(self, client: Client, room_id: str, sync_filter: str | None = STICKY_ONLY) -> None:
        self.client = client
        self.room_id = room_id
        self.filter = sync_filter
        self.sticky: dict[str, dict[str, Any]] = {}
        self.timeline: dict[str, dict[str, Any]] = {}

    async def sync(self) -> None:
        params: dict[str, Any] = {"timeout": "300"}
        if self.filter is not None:
            params["filter"] = self.filter
        if self.client.since:
            params["since"] = self.client.since
        data = await self.client.call("GET", "/sync", **params)
        self.client.since = data["next_batch"]
        room = data.get("rooms", {}).get("join", {}).get(self.room_id, {})
        for e in room.get("msc4354_sticky", {}).get("events", []):
            self.sticky[e["event_id"]] = e
        for e in room.get("timeline", {}).get("events", []):
            self.timeline[e["event_id"]] = e

    def has(self, event_id: str) -> dict[str, Any] | None:
        return self.sticky.get(event_id) or self.timeline.get(event_id)

    async def until(self, *event_ids: str, sticky_section: bool = True, timeout: float = 30.0) -> None:
        """Sync until every one of `event_ids` came (in the sticky section, or anywhere)."""

        async def check() -> bool:
            await self.sync()
            found = self.sticky.get if sticky_section else self.has
            return all(found(e) is not None for e in event_ids)

        await wait_for(check, timeout=timeout, what=f"{event_ids} in {self.client.user_id}'s /sync")


async def deactivate(srv: RunningServer, user_id: str, http: aiohttp.ClientSession) -> None:
    await srv.register("admin", admin=True)
    token = (await srv.login("admin"))["access_token"]
    url = f"{srv.base_url}/_synapse/admin/v1/deactivate/{quote(user_id)}"
    async with http.post(url, json={"erase": True}, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200, await resp.text()


async def soft_failed_rows(srv: RunningServer, event_ids: list[str]) -> dict[str, bool]:
    async with srv.hs.db.read() as conn:
        rows = await conn.execute(
            select(sticky_table.c.event_id, sticky_table.c.soft_failed).where(
                sticky_table.c.event_id.in_(event_ids)
            )
        )
        return {r[0]: bool(r[1]) for r in rows}


async def test_sticky_events_reach_joined_servers_and_are_pushed_to_new_ones(
    test_ca: CertAuthority, tmp_path: os.PathLike[str]
) -> None:
    dirs = [os.path.join(str(tmp_path), name) for name in ("a", "b", "c")]
    async with (
        fed_server(dirs[0], test_ca) as a,
        fed_server(dirs[1], test_ca) as b,
        fed_server(dirs[2], test_ca) as c,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        dave = await Client.login(a, "dave", http)
        bob = await Client.login(b, "bob", http)
        carol = await Client.login(c, "carol", http)
        room_id = await alice.create_room(preset="public_chat")
        await bob.join(room_id, via=[a.server_name])
        await dave.join(room_id)
        await wait_for(lambda: has_membership(a, room_id, bob.user_id), what="bob joined on A")

        # Dave's sticky event, then Dave is erased: it is pushed to no new server.
        erased = await send_sticky(dave, room_id, "dave")
        for i in range(15):
            await alice.send(room_id, f"gap {i}")
        from_a = await send_sticky(alice, room_id, "alice")
        from_b = await send_sticky(bob, room_id, "bob")
        seen_by_bob = Seen(bob, room_id)
        await seen_by_bob.until(from_a)
        assert seen_by_bob.sticky[from_a]["msc4354_sticky"] == {"duration_ms": DURATION}
        assert seen_by_bob.sticky[from_a]["content"]["msc4354_sticky_key"] == "alice"
        assert 0 < seen_by_bob.sticky[from_a]["unsigned"]["msc4354_sticky_duration_ttl_ms"] <= DURATION
        await deactivate(a, dave.user_id, http)

        # Far more messages than a joining server fetches as history.
        for i in range(60):
            await alice.send(room_id, f"filler {i}")
        await wait_for(lambda: _has_body(bob, room_id, "filler 59"), what="the fillers on B")

        # C joins through A: A pushes Alice's sticky event, B (told of the join) Bob's.
        seen_by_carol = Seen(carol, room_id)
        await seen_by_carol.sync()
        await carol.join(room_id, via=[a.server_name])
        await seen_by_carol.until(from_a, from_b)
        for event_id, key in ((from_a, "alice"), (from_b, "bob")):
            event = seen_by_carol.sticky[event_id]
            assert event["msc4354_sticky"] == {"duration_ms": DURATION}
            assert event["content"]["msc4354_sticky_key"] == key
        assert federation_of(a).sticky.pushed[c.server_name] == 1  # not Dave's
        assert federation_of(b).sticky.pushed[c.server_name] == 1
        # A server with no one in the room (left, kicked, its join never took) gets none.
        assert await federation_of(a).sticky.push_to(room_id, "elsewhere.invalid") == 0
        await seen_by_carol.sync()
        assert seen_by_carol.has(erased) is None
        assert await c.hs.events.get_event(erased) is None


async def test_sticky_event_fetched_as_history_is_delivered(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    """A sticky event a joining server backfills (not pushed: A's pushes are off here) is
    sticky there too, delivered in the sticky section."""
    ids: list[str] = []

    async def before_join(a: RunningServer, alice: Client, room_id: str) -> None:
        federation_of(a).inbound.state_changed = None  # no pushes, no re-checks
        # Dave's sticky event, then Dave is banned: B must not deliver it.
        dave = await Client.login(a, "dave", alice.session)
        await dave.join(room_id)
        ids.append(await send_sticky(dave, room_id, "banned"))
        await alice.call("POST", f"/rooms/{quote(room_id)}/ban", {"user_id": dave.user_id})
        ids.append(await send_sticky(alice, room_id, "history"))
        for i in range(3):
            await alice.send(room_id, f"after {i}")

    async with joined_pair(test_ca, tmp_dirs, before_join=before_join) as (a, b, _alice, bob, room_id):
        banned, history = ids
        seen = Seen(bob, room_id)
        await seen.until(history)
        assert seen.sticky[history]["msc4354_sticky"] == {"duration_ms": DURATION}
        assert federation_of(a).sticky.pushed[b.server_name] == 0
        stored = await b.hs.events.get_event(history)
        assert stored is not None and stored.stream_id < 0  # backfilled
        # The banned sender's was backfilled too, but stays soft-failed.
        assert await b.hs.events.get_event(banned) is not None
        await seen.sync()
        assert banned not in seen.sticky


async def _has_body(client: Client, room_id: str, body: str) -> bool:
    return body in await room_bodies(client, room_id)


async def test_soft_failed_sticky_events_are_delivered_once_they_pass(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs, room_version="11") as (a, b, alice, bob, room_id):
        fa, fb = federation_of(a), federation_of(b)
        carol = await Client.login(b, "carol", bob.session)
        await carol.join(room_id, via=[a.server_name])
        await wait_for(lambda: has_membership(a, room_id, carol.user_id), what="carol joined on A")
        seen = Seen(alice, room_id, sync_filter=None)
        await seen.sync()

        # A and B stop talking. On A the two sticky types come to need power 50 and Carol
        # is kicked; on B, which has not heard, Bob and Carol send sticky events.
        await fa.queue.stop()
        await fb.queue.stop()
        power = await alice.call("GET", f"/rooms/{room_id}/state/m.room.power_levels/")
        power.setdefault("events", {}).update({MEMBER: 50, LOCKED: 50})
        await alice.state(room_id, "m.room.power_levels", power)
        await alice.call("POST", f"/rooms/{room_id}/kick", {"user_id": carol.user_id})
        by_bob = await send_sticky(bob, room_id, "bob")
        locked = await send_sticky(bob, room_id, "locked", LOCKED)
        by_carol = await send_sticky(carol, room_id, "carol")
        sent = [by_bob, locked, by_carol]
        await fa.queue.start()
        await fb.queue.start()

        # A takes them into the DAG soft-failed, recorded as such: clients get none.
        async def recorded() -> bool:
            return await soft_failed_rows(a, sent) == dict.fromkeys(sent, True)

        await wait_for(recorded, what="the sticky events soft-failed on A")
        infos = await fa.tracker.get_infos(sent)
        assert all(infos[e].soft_failed for e in sent)
        await seen.sync()
        assert not any(seen.has(e) for e in sent)

        # A local change: the member type is open again (the other is not): Bob's event
        # passes now and comes down /sync's sticky section.
        power["events"][MEMBER] = 0
        await alice.state(room_id, "m.room.power_levels", power)
        await seen.until(by_bob)
        assert seen.sticky[by_bob]["msc4354_sticky"] == {"duration_ms": DURATION}
        assert seen.sticky[by_bob]["content"]["msc4354_sticky_key"] == "bob"
        assert await soft_failed_rows(a, sent) == {by_bob: False, locked: True, by_carol: True}

        # A remote change: Carol joins again (on B, which now knows she was kicked).
        await wait_for(lambda: has_membership(b, room_id, carol.user_id, "leave"), what="the kick on B")
        await carol.join(room_id, via=[a.server_name])
        await wait_for(lambda: has_membership(a, room_id, carol.user_id), what="carol back on A")
        await seen.until(by_carol)
        assert fa.sticky.accepted == 2

        # The one still not allowed never reaches a client.
        last = await alice.send(room_id, "last")
        await seen.until(last, sticky_section=False)
        assert seen.has(locked) is None
        assert (await soft_failed_rows(a, [locked]))[locked] is True


async def test_a_long_backlog_keeps_its_sticky_events(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    """The outbox drops nothing: a destination that was unreachable gets every queued row,
    in order, however many (bridge.queue); sticky events of erased users stay behind."""
    async with joined_pair(test_ca, tmp_dirs) as (a, b, alice, bob, room_id):
        fa = federation_of(a)
        seen = Seen(bob, room_id)
        await seen.sync()
        await fa.queue.stop()
        sticky = await send_sticky(alice, room_id, "backlog")
        for i in range(120):
            await alice.send(room_id, f"queued {i}")
        assert await fa.store.pending_count(b.server_name) >= 121
        await fa.queue.start()
        await seen.until(sticky)
        assert seen.sticky[sticky]["msc4354_sticky"] == {"duration_ms": DURATION}
        assert await fa.queue.idle(20)

        # An erased user's sticky events are not sent (what is left in the outbox is what
        # the destination has to catch up).
        dave = await Client.login(a, "dave", bob.session)
        await dave.join(room_id)
        erased = await send_sticky(dave, room_id, "dave")
        kept = await send_sticky(alice, room_id, "kept")
        stored = await a.hs.events.get_pdus([erased, kept])
        assert await unsendable(a.hs.accounts.erased, a.server_name, stored.values()) == set()
        await deactivate(a, dave.user_id, bob.session)
        assert await unsendable(a.hs.accounts.erased, a.server_name, stored.values()) == {erased}


# With a real Synapse (MSC4354 on) --------------------------------------------------------------

synapse_timeout = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def sticky_synapse(
    test_ca: CertAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SynapseServer]:
    server = SynapseServer(
        str(tmp_path_factory.mktemp("synapse-msc4354")),
        test_ca,
        experimental_features={"msc4354_enabled": True},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def synapse_client(synapse: SynapseServer, localpart: str, http: aiohttp.ClientSession) -> Client:
    login = synapse.register(localpart)
    return Client(synapse.base_url, login["user_id"], login["access_token"], http)


@synapse_timeout
async def test_sticky_events_both_ways_with_synapse(
    sticky_synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str]
) -> None:
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        syn = synapse_client(sticky_synapse, "gwen", http)
        hugo = await Client.login(sotto, "hugo", http)
        room_id = await syn.create_room(preset="public_chat")
        await hugo.join(room_id, via=[sticky_synapse.server_name])

        async def hugo_joined() -> bool:
            data = await syn.call("GET", f"/rooms/{room_id}/joined_members")
            return hugo.user_id in data.get("joined", {})

        await wait_for(hugo_joined, what="hugo joined on Synapse")
        seen_by_hugo = Seen(hugo, room_id)
        await seen_by_hugo.sync()
        seen_by_syn = Seen(syn, room_id, sync_filter=None)
        await seen_by_syn.sync()

        from_synapse = await send_sticky(syn, room_id, "synapse")
        await seen_by_hugo.until(from_synapse)
        event = seen_by_hugo.sticky[from_synapse]
        assert event["msc4354_sticky"] == {"duration_ms": DURATION}
        assert event["content"]["msc4354_sticky_key"] == "synapse"

        from_sotto = await send_sticky(hugo, room_id, "sotto")
        await seen_by_syn.until(from_sotto, sticky_section=False)
        event = seen_by_syn.has(from_sotto) or {}
        assert event["msc4354_sticky"] == {"duration_ms": DURATION}
        assert event["content"]["msc4354_sticky_key"] == "sotto"
        assert event["sender"] == hugo.user_id


@synapse_timeout
async def test_sotto_pushes_sticky_events_to_a_joining_synapse(
    sticky_synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str]
) -> None:
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        ivy = await Client.login(sotto, "ivy", http)
        syn = synapse_client(sticky_synapse, "jack", http)
        room_id = await ivy.create_room(preset="public_chat")
        sticky = await send_sticky(ivy, room_id, "before-synapse")
        for i in range(60):
            await ivy.send(room_id, f"filler {i}")
        seen = Seen(syn, room_id, sync_filter=None)
        await seen.sync()
        await syn.join(room_id, via=[sotto.server_name])
        await seen.until(sticky, sticky_section=False, timeout=60)
        event = seen.has(sticky) or {}
        assert event["msc4354_sticky"] == {"duration_ms": DURATION}
        assert event["content"]["msc4354_sticky_key"] == "before-synapse"
        assert federation_of(sotto).sticky.pushed[sticky_synapse.server_name] == 1
