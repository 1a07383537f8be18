"""Traces of what the server sends out by itself: transactions to application services and
notifications to push gateways (client spans starting traces of their own)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.integration.test_push_gateway import ALLOW_LOOPBACK, room, send, set_pusher
from tests.integration.test_tracing import tracing
from tests.support.appservice import HS_TOKEN, Receiver, write_registration
from tests.support.http import RawClient
from tests.support.otlp_collector import otlp_collector
from tests.support.push_gateway import gateway
from tests.support.server import free_port, run_server


async def test_transactions_to_an_application_service_are_traced(tmp_path: Path) -> None:
    receiver = Receiver()
    port = free_port()
    registration = write_registration(str(tmp_path), port)
    async with (
        otlp_collector() as collector,
        receiver.running(port),
        run_server(str(tmp_path), app_services=[registration], tracing=tracing(collector)) as srv,
        aiohttp.ClientSession() as session,
    ):
        login = await srv.login("alice")
        alice = RawClient(session, srv.base_url, login["access_token"], login["user_id"])
        bot = f"@_bridge_bot:{srv.server_name}"
        await alice.ok("POST", "/createRoom", json={"invite": [bot]})

        pushes = await collector.wait_for(lambda: collector.named("PUT /_matrix/app/v1/transactions"))
        assert receiver.transactions
        assert pushes[0].kind == "client"
        assert pushes[0].attributes["sotto.appservice.id"] == "test-bridge"
        assert pushes[0].attributes["http.response.status_code"] == 200
        for span in collector.spans:
            # The transaction ID (a number) stays out of the span's name and template.
            assert not any(HS_TOKEN in text or "transactions/" in text for text in span.texts())


async def test_notifications_to_a_push_gateway_are_traced(tmp_path: Path) -> None:
    async with (
        otlp_collector() as collector,
        gateway() as gw,
        run_server(str(tmp_path), push=ALLOW_LOOPBACK, tracing=tracing(collector)) as srv,
        aiohttp.ClientSession() as session,
    ):
        clients = []
        for name in ("alice", "bob"):
            login = await srv.login(name)
            clients.append(RawClient(session, srv.base_url, login["access_token"], login["user_id"]))
        alice, bob = clients
        room_id = await room(alice, bob, direct=True)
        await set_pusher(bob, gw, "bob-secret-pushkey")
        await send(alice, room_id, {"msgtype": "m.text", "body": "hi"}, "t1")
        await gw.next()

        (notify,) = await collector.wait_for(lambda: collector.named("POST push gateway"))
        assert notify.kind == "client" and notify.parent_id == ""
        assert notify.attributes["server.address"] == "127.0.0.1"
        assert notify.attributes["http.response.status_code"] == 200
        for span in collector.spans:
            assert not any("bob-secret-pushkey" in text or gw.url in text for text in span.texts())
