"""OpenTelemetry tracing (`tracing:`): spans leave over real OTLP/HTTP to a receiver that
decodes them as a collector does (tests/support/otlp_collector.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest

from homeserver.config import ConfigError
from homeserver.tracing import EXPORT_TIMEOUT_S, SHUTDOWN_WAIT_S, build_tracing
from tests.security.support import raw
from tests.support import server as test_server
from tests.support.otlp_collector import Collector, ReceivedSpan, otlp_collector
from tests.support.server import RunningServer, free_port, run_server

SEND = "PUT /_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}"
SECRET_BODY = "a message body that must never reach a trace"
# W3C trace context a client (or a proxy) might send.
REMOTE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE_PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{REMOTE_TRACE}-{REMOTE_PARENT}-01"


def tracing(collector: Collector, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "endpoint": collector.url, "export_delay_ms": 50, **extra}


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    status, answer, _ = await raw(http, method, url, token=token, json=body, headers=headers)
    return status, answer


def server_span(collector: Collector, name: str) -> ReceivedSpan | None:
    found = [s for s in collector.named(name) if s.kind == "server"]
    return found[-1] if found else None


class TracedRoom(NamedTuple):
    collector: Collector
    srv: RunningServer
    http: aiohttp.ClientSession
    token: str  # alice's
    base: str  # the client API's v3 prefix
    room_id: str  # a room alice created


@asynccontextmanager
async def traced_room(tmp_path: Path) -> AsyncIterator[TracedRoom]:
    """A server tracing to a collector, alice signed in, and a room of hers."""
    async with (
        otlp_collector() as collector,
        run_server(str(tmp_path), tracing=tracing(collector)) as srv,
        aiohttp.ClientSession() as http,
    ):
        token = (await srv.login("alice"))["access_token"]
        base = f"{srv.base_url}/_matrix/client/v3"
        status, room = await call(http, "POST", f"{base}/createRoom", token, {})
        assert status == 200
        yield TracedRoom(collector, srv, http, token, base, room["room_id"])


async def test_requests_and_the_work_they_wait_for_are_traced(tmp_path: Path) -> None:
    async with traced_room(tmp_path) as (collector, srv, http, token, base, room_id):
        status, _ = await call(
            http, "PUT", f"{base}/rooms/{room_id}/send/m.room.message/t1", token, {"body": SECRET_BODY}
        )
        assert status == 200
        status, first = await call(http, "GET", f"{base}/sync?timeout=0", token)
        assert status == 200
        # A long-poll that waits outside aiohttp: its span ends when it starts waiting.
        status, _ = await call(http, "GET", f"{base}/sync?timeout=50&since={first['next_batch']}", token)
        assert status == 200
        # A token in the query string, as old clients send it (refused here, and still traced).
        async with http.get(f"{base}/joined_rooms", params={"access_token": token}) as resp:
            assert resp.status == 401
        status, error = await call(http, "GET", f"{base}/rooms/!nowhere:elsewhere/state", token)
        assert status == 404 and error["errcode"] == "M_NOT_FOUND"

        send = await collector.wait_for(lambda: server_span(collector, SEND))
        assert send.attributes["http.response.status_code"] == 200
        assert send.attributes["http.route"] == SEND.split(" ", 1)[1]
        assert send.parent_id == ""  # no trace context came with the request
        # The batch that stored the message is the request's child, its transaction the batch's.
        batch = await collector.wait_for(lambda: collector.children(send, "event.persist_batch"))
        assert batch[0].attributes["sotto.batch.size"] == 1
        writes = await collector.wait_for(lambda: collector.children(batch[0], "db.write"))
        assert writes[0].attributes["db.system.name"] == ("sqlite" if srv.hs.db.is_sqlite else "postgresql")

        assert await collector.wait_for(lambda: server_span(collector, "GET /_matrix/client/v3/joined_rooms"))
        syncs = await collector.wait_for(
            lambda: (
                len(collector.named("GET /_matrix/client/v3/sync")) == 2
                and collector.named("GET /_matrix/client/v3/sync")
            )
        )
        assert collector.children(syncs[0], "db.read")
        assert syncs[1].attributes["sotto.detached"] is True
        assert "http.response.status_code" not in syncs[1].attributes
        assert not collector.named("sync.answer")  # its timeout answered it: not traced
        refused = await collector.wait_for(
            lambda: server_span(collector, "GET /_matrix/client/v3/rooms/{room_id}/state")
        )
        assert refused.attributes["http.response.status_code"] == 404
        assert refused.attributes["matrix.errcode"] == "M_NOT_FOUND"
        assert send.resource["service.name"] == "sotto"
        assert send.resource["matrix.server_name"] == srv.server_name

        # Database work is traced only for what traces it (background loops start no traces).
        database = [s for s in collector.spans if s.name.startswith("db.")]
        assert database and all(s.parent_id for s in database)
        # No span joins one that has ended (as a task started by a finished request would).
        by_id = {s.span_id: s for s in collector.spans}
        for span in collector.spans:
            parent = by_id.get(span.parent_id)
            assert parent is None or parent.start <= span.start <= parent.end, (span, parent)

        # Identifiers, tokens and bodies stay out of every span.
        for span in collector.spans:
            for text in span.texts():
                assert token not in text, span
                assert SECRET_BODY not in text, span
                assert room_id not in text, span
                assert "!nowhere" not in text, span


async def test_a_woken_long_poll_is_traced_and_linked_to_its_request(tmp_path: Path) -> None:
    async with traced_room(tmp_path) as (collector, _srv, http, token, base, room_id):
        status, first = await call(http, "GET", f"{base}/sync?timeout=0", token)
        assert status == 200
        waiting = asyncio.create_task(
            call(http, "GET", f"{base}/sync?timeout=30000&since={first['next_batch']}", token)
        )
        parked = await collector.wait_for(
            lambda: [
                s
                for s in collector.named("GET /_matrix/client/v3/sync")
                if s.attributes.get("sotto.detached")
            ]
        )
        url = f"{base}/rooms/{room_id}/send/m.room.message/w1"
        status, _ = await call(http, "PUT", url, token, {"body": "wake up"})
        assert status == 200
        status, woken = await waiting
        assert status == 200 and room_id in woken["rooms"]["join"]

        (answer,) = await collector.wait_for(
            lambda: [s for s in collector.named("sync.answer") if "http.response.status_code" in s.attributes]
        )
        assert answer.parent_id == "" and answer.links == [(parked[0].trace_id, parked[0].span_id)]
        assert answer.attributes["http.response.status_code"] == 200
        assert await collector.wait_for(lambda: collector.children(answer, "db.read"))


async def test_a_batch_of_messages_is_the_child_of_one_request_and_linked_to_the_others(
    tmp_path: Path,
) -> None:
    async with traced_room(tmp_path) as (collector, _srv, http, token, base, room_id):
        url = f"{base}/rooms/{room_id}/send/m.room.message/"
        sent = await asyncio.gather(
            *(call(http, "PUT", url + f"t{i}", token, {"body": "x"}) for i in range(8))
        )
        assert [status for status, _ in sent] == [200] * 8

        sends = await collector.wait_for(lambda: len(collector.named(SEND)) == 8 and collector.named(SEND))
        requests = {s.span_id for s in sends}

        def batches() -> list[ReceivedSpan]:
            found = collector.named("event.persist_batch")
            return found if sum(b.attributes["sotto.batch.size"] for b in found) == 8 else []

        covered: set[str] = set()
        for batch in await collector.wait_for(batches):
            linked = {span_id for _, span_id in batch.links}
            # Its parent is one of the requests it stored a message for; the others are links.
            assert batch.parent_id in requests and batch.parent_id not in linked
            assert linked <= requests
            assert len(linked) + 1 == batch.attributes["sotto.batch.size"]
            covered |= linked | {batch.parent_id}
        assert covered == requests


async def test_exceptions_are_named_not_quoted(tmp_path: Path) -> None:
    async with otlp_collector() as collector:
        config = test_server.test_config(str(tmp_path), 8008, tracing=tracing(collector)).tracing
        traced = build_tracing(config, "example.org")
        with pytest.raises(ValueError), traced.span("failing", root=True):
            raise ValueError(SECRET_BODY)
        await traced.close()
        (failed,) = collector.named("failing")
    assert failed.status == 2  # error
    assert failed.attributes["error.type"] == "ValueError"
    assert not any(SECRET_BODY in text for text in failed.texts())


async def test_work_left_behind_by_a_finished_request_joins_no_trace(tmp_path: Path) -> None:
    async with otlp_collector() as collector:
        config = test_server.test_config(str(tmp_path), 8008, tracing=tracing(collector)).tracing
        traced = build_tracing(config, "example.org")
        request_ended = asyncio.Event()

        async def background() -> None:
            # A task started during the request: it inherits the request's span.
            await request_ended.wait()
            with traced.span("db.read"):
                pass
            with traced.span("outbound", root=True):
                pass

        with traced.span("request", root=True):
            task = asyncio.create_task(background())
        request_ended.set()
        await task
        await traced.close()
        assert collector.named("request")
        assert collector.named("db.read") == []  # nothing of a trace to join: not recorded
        (outbound,) = collector.named("outbound")
        assert outbound.parent_id == ""  # a trace of its own


async def test_a_collector_that_is_away_does_not_hold_up_the_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    away = f"http://127.0.0.1:{free_port()}/v1/traces"
    config = test_server.test_config(str(tmp_path), 8008, tracing={"enabled": True, "endpoint": away})
    traced = build_tracing(config.tracing, "example.org")
    with traced.span("request", root=True):
        pass
    # The exporter would retry for EXPORT_TIMEOUT_S; the stop gives up well before.
    assert SHUTDOWN_WAIT_S + 4 < EXPORT_TIMEOUT_S
    await asyncio.wait_for(traced.close(), SHUTDOWN_WAIT_S + 4)
    assert "did not take the last spans" in caplog.text


async def test_spans_queued_at_shutdown_are_sent(tmp_path: Path) -> None:
    async with otlp_collector() as collector:
        # Spans would wait ten minutes to be sent together; stopping the server sends them.
        async with run_server(str(tmp_path), tracing=tracing(collector, export_delay_ms=600_000)) as srv:
            await srv.login("alice")
        assert server_span(collector, "POST /_matrix/client/v3/login") is not None


async def test_incoming_trace_context_is_followed_only_when_configured(tmp_path: Path) -> None:
    versions = "GET /_matrix/client/versions"
    headers = {"traceparent": TRACEPARENT}
    async with otlp_collector() as collector, aiohttp.ClientSession() as http:
        async with run_server(str(tmp_path / "closed"), tracing=tracing(collector)) as srv:
            status, _ = await call(http, "GET", f"{srv.base_url}/_matrix/client/versions", headers=headers)
            assert status == 200
            ignored = await collector.wait_for(lambda: server_span(collector, versions))
        assert ignored.trace_id != REMOTE_TRACE and ignored.parent_id == ""
        collector.spans.clear()

        followed = tracing(collector, accept_remote_context=True)
        async with run_server(str(tmp_path / "open"), tracing=followed) as srv:
            status, _ = await call(http, "GET", f"{srv.base_url}/_matrix/client/versions", headers=headers)
            assert status == 200
            joined = await collector.wait_for(lambda: server_span(collector, versions))
        assert (joined.trace_id, joined.parent_id) == (REMOTE_TRACE, REMOTE_PARENT)


async def test_sampling_keeps_no_trace_at_ratio_zero(tmp_path: Path) -> None:
    async with otlp_collector() as collector, aiohttp.ClientSession() as http:
        async with run_server(str(tmp_path), tracing=tracing(collector, sample_ratio=0)) as srv:
            for _ in range(5):
                status, _ = await call(http, "GET", f"{srv.base_url}/_matrix/client/versions")
                assert status == 200
        async with run_server(str(tmp_path / "all"), tracing=tracing(collector)) as srv:
            status, _ = await call(http, "GET", f"{srv.base_url}/_matrix/client/versions")
            assert status == 200
        # Both servers have stopped, so everything they would send has been sent.
        names = {s.resource["matrix.server_name"] for s in collector.spans}
        assert names == {srv.server_name}


def test_tracing_off_loads_no_opentelemetry(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from homeserver.app import create_app\n"
        "from tests.support.server import test_config\n"
        f"create_app(test_config({str(tmp_path)!r}, 8008))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"sample_ratio": 1.5}, "sample_ratio"),
        ({"sample_ratio": True}, "sample_ratio"),
        ({"endpoint": "grpc://collector:4317"}, "endpoint"),
        ({"headers": {"x-api-key": 5}}, "headers"),
        ({"export_delay_ms": 0}, "export_delay_ms"),
        ({"service_name": ""}, "service_name"),
        ({"sampling": 0.5}, "unknown config key: tracing.sampling"),
    ],
)
def test_bad_tracing_settings_are_refused(tmp_path: Path, setting: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        test_server.test_config(str(tmp_path), 8008, tracing={"enabled": True, **setting})
