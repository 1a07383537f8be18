"""OpenTelemetry tracing across two servers: one trace from a client's request on one server
to the other server's answer (the `traceparent` header on federation requests)."""

from __future__ import annotations

import aiohttp

from tests.federation.support import CertAuthority, Client, fed_server, has_membership, wait_for
from tests.integration.test_tracing import server_span, tracing
from tests.support.otlp_collector import ReceivedSpan, otlp_collector


async def test_a_remote_join_is_one_trace_across_both_servers(
    tmp_dirs: tuple[str, str], test_ca: CertAuthority
) -> None:
    async with otlp_collector() as collector:
        spans = tracing(collector, accept_remote_context=True)
        async with (
            fed_server(tmp_dirs[0], test_ca, tracing=spans) as a,
            fed_server(tmp_dirs[1], test_ca, tracing=spans) as b,
            aiohttp.ClientSession() as http,
        ):
            alice = await Client.login(a, "alice", http)
            bob = await Client.login(b, "bob", http)
            room_id = await alice.create_room(preset="public_chat")
            await bob.join(room_id, via=[a.server_name])
            await wait_for(lambda: has_membership(a, room_id, bob.user_id), what="bob's join on A")

            def joined() -> list[ReceivedSpan]:
                return [
                    s
                    for s in collector.named("POST /_matrix/client/v3/join/{room_id_or_alias}")
                    if s.resource["matrix.server_name"] == b.server_name
                ]

            join = (await collector.wait_for(joined))[0]
            # B asked A for a join template, within bob's request ...
            asks = await collector.wait_for(
                lambda: collector.children(join, "GET /_matrix/federation/v1/make_join")
            )
            assert asks[0].kind == "client"
            assert asks[0].attributes["server.address"] == a.server_name
            # ... and A's answer to it belongs to the same trace.
            answer = await collector.wait_for(
                lambda: server_span(collector, "GET /_matrix/federation/v1/make_join/{room_id}/{user_id}")
            )
            assert answer.resource["matrix.server_name"] == a.server_name
            assert (answer.trace_id, answer.parent_id) == (join.trace_id, asks[0].span_id)
            assert answer.attributes["http.response.status_code"] == 200

            # A's messages reach B in transactions sent in the background (a trace of their own
            # unless a live request started them).
            await alice.send(room_id, "hello")
            pushes = await collector.wait_for(
                lambda: [
                    s
                    for s in collector.named("PUT /_matrix/federation/v1/send")
                    if s.resource["matrix.server_name"] == a.server_name
                ]
            )
            assert pushes[0].kind == "client"
            received = await collector.wait_for(
                lambda: [
                    s
                    for s in collector.named("PUT /_matrix/federation/v1/send/{txn_id}")
                    if s.parent_id == pushes[0].span_id
                ]
            )
            assert received[0].trace_id == pushes[0].trace_id
            assert received[0].resource["matrix.server_name"] == b.server_name
