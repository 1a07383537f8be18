"""Long-polling /sync detached from aiohttp while it waits (homeserver.api.detached): the
wait holds no request handler, the answer is a well-formed HTTP/1.1 response with the
usual headers, the connection then serves the client's next request, and a client that
leaves, pipelines, or speaks HTTP/1.0 is handled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

import pytest

from homeserver.api.sync import LONG_POLLS_KEY, LongPolls
from tests.support.http import RawClient
from tests.support.server import RunningServer

MakeUser = Callable[[str], Awaitable[RawClient]]


class Conn:
    """One raw HTTP/1.1 connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str) -> None:
        self.reader = reader
        self.writer = writer
        self.token = token

    def request_bytes(self, path: str, version: str = "1.1") -> bytes:
        return (
            f"GET {path} HTTP/{version}\r\nHost: localhost\r\nAuthorization: Bearer {self.token}\r\n\r\n"
        ).encode()

    async def response(self) -> tuple[int, dict[str, str], Any]:
        status_line = await asyncio.wait_for(self.reader.readline(), 30)
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers["content-length"]))
        return status, headers, json.loads(body)


@asynccontextmanager
async def connect(server: RunningServer, token: str) -> AsyncIterator[Conn]:
    url = urlsplit(server.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        yield Conn(reader, writer, token)
    finally:
        writer.close()


def sync_path(since: str, timeout_ms: int) -> str:
    return f"/_matrix/client/v3/sync?since={quote(since)}&timeout={timeout_ms}"


def polls(server: RunningServer) -> LongPolls:
    return server.runner.app[LONG_POLLS_KEY]


async def until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@dataclass
class Scene:
    alice: RawClient
    bob: RawClient
    room: str
    since: str
    conn: Conn  # bob's connection, its long-poll detached and waiting


@asynccontextmanager
async def parked_poll(
    server: RunningServer, make_user: MakeUser, timeout_ms: int = 30_000
) -> AsyncIterator[Scene]:
    """Alice and Bob in a room, and Bob's long-poll from `since` parked on a raw connection."""
    alice, bob = await make_user("alice"), await make_user("bob")
    room = await alice.room_with(bob)
    since = (await bob.sync())["next_batch"]
    async with connect(server, bob.token or "") as conn:
        conn.writer.write(conn.request_bytes(sync_path(since, timeout_ms)))
        await until(lambda: len(polls(server).parked) == 1)
        yield Scene(alice, bob, room, since, conn)


async def test_a_parked_sync_is_detached_answered_and_the_connection_reused(
    server: RunningServer, make_user: MakeUser
) -> None:
    async with parked_poll(server, make_user) as s:
        assert server.hs.notifier.waiting == 1
        event_id = await s.alice.send(s.room, "wake up", "t1")
        status, headers, body = await s.conn.response()
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert headers["access-control-allow-origin"] == "*"
        assert "date" in headers and "server" in headers
        events = body["rooms"]["join"][s.room]["timeline"]["events"]
        assert [e["event_id"] for e in events] == [event_id]
        assert not polls(server).parked and server.hs.notifier.waiting == 0
        # The same connection serves the next request (handed back to aiohttp).
        s.conn.writer.write(s.conn.request_bytes(sync_path(body["next_batch"], 0)))
        status, _, again = await s.conn.response()
        assert status == 200 and again["next_batch"] == body["next_batch"]


async def test_a_parked_sync_times_out_with_an_empty_answer(
    server: RunningServer, make_user: MakeUser
) -> None:
    async with parked_poll(server, make_user, timeout_ms=300) as s:
        status, _, body = await s.conn.response()
    assert status == 200
    assert body["next_batch"].startswith("s")
    assert not body["rooms"]["join"]
    assert not polls(server).parked and server.hs.notifier.waiting == 0


async def test_a_client_that_leaves_while_parked_leaves_nothing_behind(
    server: RunningServer, make_user: MakeUser
) -> None:
    async with parked_poll(server, make_user) as s:
        pass  # the connection closes
    await until(lambda: not polls(server).parked)
    assert server.hs.notifier.waiting == 0
    # The room still works for everyone else.
    await s.alice.send(s.room, "anyone?", "t1")
    assert (await s.bob.sync(s.since))["rooms"]["join"][s.room]["timeline"]["events"]


async def test_a_request_sent_while_parked_is_answered_after_the_long_poll(
    server: RunningServer, make_user: MakeUser
) -> None:
    async with parked_poll(server, make_user) as s:
        # The client's next request arrives before the first is answered (pipelining).
        s.conn.writer.write(s.conn.request_bytes("/_matrix/client/v3/account/whoami"))
        await asyncio.sleep(0.1)
        await s.alice.send(s.room, "first", "t1")
        status, _, first = await s.conn.response()
        assert status == 200 and first["rooms"]["join"][s.room]["timeline"]["events"]
        status, _, second = await s.conn.response()
        assert status == 200 and second["user_id"] == s.bob.user_id


async def test_pipelined_and_http_1_0_long_polls_wait_in_their_handler(
    server: RunningServer, make_user: MakeUser
) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    room = await alice.room_with(bob)
    since = (await bob.sync())["next_batch"]
    async with connect(server, bob.token or "") as conn:
        # Two requests in one write: aiohttp has the second queued, so the first stays.
        path = sync_path(since, 30_000)
        conn.writer.write(conn.request_bytes(path) + conn.request_bytes("/_matrix/client/v3/account/whoami"))
        await until(lambda: server.hs.notifier.waiting == 1)
        assert not polls(server).parked
        await alice.send(room, "one", "t1")
        status, _, first = await conn.response()
        assert status == 200 and first["rooms"]["join"][room]["timeline"]["events"]
        status, _, second = await conn.response()
        assert status == 200 and second["user_id"] == bob.user_id
    since = first["next_batch"]
    async with connect(server, bob.token or "") as conn:
        conn.writer.write(conn.request_bytes(sync_path(since, 30_000), version="1.0"))
        await until(lambda: server.hs.notifier.waiting == 1)
        assert not polls(server).parked
        await alice.send(room, "two", "t2")
        status, _, body = await conn.response()
        assert status == 200 and body["rooms"]["join"][room]["timeline"]["events"]


async def test_shutdown_answers_parked_long_polls(server: RunningServer, make_user: MakeUser) -> None:
    async with parked_poll(server, make_user, timeout_ms=60_000) as s:
        await polls(server).shutdown(server.runner.app)
        status, _, body = await s.conn.response()
    assert status == 200 and body["next_batch"].startswith("s")
    assert not polls(server).parked


async def test_a_parked_sync_whose_answer_fails_gets_a_matrix_error(
    server: RunningServer, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with parked_poll(server, make_user) as s:

        async def failing(*_: object) -> NoReturn:
            raise RuntimeError("the database went away")  # injected: a failure while answering

        monkeypatch.setattr(server.hs.sync, "attempt", failing)
        await s.alice.send(s.room, "wake up", "t1")
        status, headers, body = await s.conn.response()
        assert status == 500 and headers["content-type"] == "application/json"
        assert body["errcode"] == "M_UNKNOWN"
        assert not polls(server).parked and server.hs.notifier.waiting == 0
        # The connection still serves the next request.
        monkeypatch.undo()
        s.conn.writer.write(s.conn.request_bytes("/_matrix/client/v3/account/whoami"))
        status, _, me = await s.conn.response()
        assert status == 200 and me["user_id"] == s.bob.user_id
