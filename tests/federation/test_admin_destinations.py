"""The admin API's federation destinations (bridge/admin.py): what this server knows of the
servers it sends to, and resetting one's backoff."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import aiohttp
from sqlalchemy import select

from homeserver.storage.schema import events
from tests.federation.support import CertAuthority, Client, fed_server, federation_of, wait_for
from tests.security.support import raw
from tests.support.server import RunningServer

DESTINATIONS = "/_synapse/admin/v1/federation/destinations"
# Nothing listens on port 1: every transaction to it fails at once.
DOWN = "127.0.0.1:1"


async def admin_call(
    http: aiohttp.ClientSession, base: str, token: str, method: str, path: str, **params: str
) -> tuple[int, Any]:
    status, body, _ = await raw(http, method, base + path, token=token, params=params, json={})
    return status, body


async def stream_id(server: RunningServer, event_id: str) -> int:
    async with server.hs.db.read() as conn:
        found = await conn.execute(select(events.c.stream_id).where(events.c.event_id == event_id))
        return int(found.scalar_one())


async def test_destinations_are_listed_with_their_retry_state_and_can_be_reset(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    # A failing destination waits a minute before its next attempt unless an admin resets it.
    slow_retries = {"retry_min_ms": 60_000, "retry_max_ms": 120_000}
    async with (
        fed_server(tmp_dirs[0], test_ca, federation=slow_retries) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        await a.register("root", admin=True)
        token, _ = await a.hs.auth.create_session(f"@root:{a.server_name}", None, None)

        async def call(method: str, path: str, **params: str) -> tuple[int, Any]:
            return await admin_call(http, a.base_url, token, method, path, **params)

        room_id = await alice.create_room(preset="public_chat")
        await bob.join(room_id, via=[a.server_name])
        hello = await alice.send(room_id, "hello")  # A sends B a transaction
        queue = federation_of(a).queue
        await queue.send_edu(
            "m.typing", {"room_id": room_id, "user_id": alice.user_id, "typing": True}, {DOWN}
        )

        async def listed() -> bool:
            status, body = await call("GET", DESTINATIONS)
            names = {d["destination"]: d for d in body["destinations"]}
            return (
                status == 200 and b.server_name in names and names.get(DOWN, {}).get("retry_interval", 0) > 0
            )

        await wait_for(listed, what="both destinations listed, the down one failing")

        async def rooms_of_b(**params: str) -> Any:
            status, body = await call("GET", f"{DESTINATIONS}/{quote(b.server_name)}/rooms", **params)
            assert status == 200, body
            return body

        async def delivered(total: int) -> bool:
            return bool((await rooms_of_b())["total"] == total)

        await wait_for(lambda: delivered(1), what="the room's messages delivered to B")
        async with http.get(f"{a.base_url}/metrics") as resp:
            metrics = {
                name: float(value)
                for name, _, value in (line.partition(" ") for line in (await resp.text()).splitlines())
                if name.startswith("sotto_federation_")
            }
        assert metrics["sotto_federation_failing_destinations"] == 1
        assert metrics["sotto_federation_failed_transactions_total"] >= 1
        assert metrics["sotto_federation_transactions_total"] >= 1
        status, body = await call("GET", DESTINATIONS)
        assert body["total"] == 2 and "next_token" not in body
        healthy, failing = (
            next(d for d in body["destinations"] if d["destination"] == name)
            for name in (b.server_name, DOWN)
        )
        hello_pos = await stream_id(a, hello)
        assert healthy == {
            "destination": b.server_name,
            "retry_last_ts": 0,
            "retry_interval": 0,
            "failure_ts": None,
            "last_successful_stream_ordering": hello_pos,
        }
        assert failing["retry_interval"] == 60_000
        assert failing["failure_ts"] is not None and failing["retry_last_ts"] >= failing["failure_ts"]
        assert failing["retry_last_ts"] <= time.time() * 1000  # the attempt made, not the next one

        # The rooms whose events B acknowledged: the newest one's position.
        assert await rooms_of_b() == {
            "rooms": [{"room_id": room_id, "stream_ordering": hello_pos}],
            "total": 1,
        }
        status, none = await call("GET", f"{DESTINATIONS}/{quote(DOWN)}/rooms")
        assert (status, none) == (200, {"rooms": [], "total": 0})
        status, error = await call("GET", f"{DESTINATIONS}/nowhere.example/rooms")
        assert status == 404 and error["errcode"] == "M_NOT_FOUND"

        # Paging and order.
        status, page = await call("GET", DESTINATIONS, limit="1", dir="b")
        assert status == 200 and page["next_token"] == "1" and page["total"] == 2
        assert page["destinations"][0]["destination"] == max(b.server_name, DOWN)
        status, page = await call("GET", DESTINATIONS, order_by="failure_ts")
        assert [d["destination"] for d in page["destinations"]] == [DOWN, b.server_name]
        status, error = await call("GET", DESTINATIONS, order_by="size")
        assert status == 400 and error["errcode"] == "M_INVALID_PARAM"

        status, one = await call("GET", f"{DESTINATIONS}/{quote(DOWN)}")
        assert status == 200 and one == failing
        status, error = await call("GET", f"{DESTINATIONS}/nowhere.example")
        assert status == 404 and error["errcode"] == "M_NOT_FOUND"

        # A healthy destination has nothing to reset; a failing one is tried again at once.
        status, error = await call("POST", f"{DESTINATIONS}/{quote(b.server_name)}/reset_connection")
        assert status == 400
        attempts = queue.failed_transactions
        status, _ = await call("POST", f"{DESTINATIONS}/{quote(DOWN)}/reset_connection")
        assert status == 200

        async def tried_again() -> bool:
            return queue.failed_transactions > attempts

        await wait_for(tried_again, what="another attempt after the reset")
        status, after = await call("GET", f"{DESTINATIONS}/{quote(DOWN)}")
        assert after["retry_last_ts"] > failing["retry_last_ts"]

        # A second room: listed once its message is delivered; pages by room ID.
        other_room = await alice.create_room(preset="public_chat")
        await bob.join(other_room, via=[a.server_name])
        await alice.send(other_room, "later")
        await wait_for(lambda: delivered(2), what="the second room's message delivered to B")
        page = await rooms_of_b(limit="1", dir="b")
        assert (page["total"], page["next_token"]) == (2, "1")
        assert [r["room_id"] for r in page["rooms"]] == [max(room_id, other_room)]
        status, one = await call("GET", f"{DESTINATIONS}/{quote(b.server_name)}")
        assert one["last_successful_stream_ordering"] > hello_pos

        # Later messages move the room's position to the newest delivered.
        sent = [await alice.send(room_id, f"more {i}") for i in range(3)]
        newest = await stream_id(a, sent[-1])

        async def moved() -> bool:
            rooms = (await rooms_of_b())["rooms"]
            return any(r["room_id"] == room_id and r["stream_ordering"] == newest for r in rooms)

        await wait_for(moved, what="the first room's position moved to its newest message")
        # A transaction holding several of a room's events records the newest of them.
        await federation_of(a).store.remove([-1], b.server_name, sent)
        assert await moved()
        # An older event acknowledged later (queued out of order by another worker) does not
        # move the position back.
        await federation_of(a).store.remove([-1], b.server_name, sent[:1])
        assert await moved()

        # Only admins.
        status, error = await admin_call(http, a.base_url, alice.token, "GET", DESTINATIONS)
        assert status == 403 and error["errcode"] == "M_FORBIDDEN"
