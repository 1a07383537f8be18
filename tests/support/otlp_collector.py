"""An OTLP/HTTP trace receiver on loopback, standing in for an OpenTelemetry collector
(none is installed here): it decodes each export with the OTLP protobuf definitions, as a
collector does, and keeps the spans for the test to look at."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.support.server import free_port

KINDS = {1: "internal", 2: "server", 3: "client"}


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace ID, span ID)
    start: int  # nanoseconds since the epoch
    end: int
    status: int  # 0 unset, 1 ok, 2 error
    status_message: str
    # Each span event's name and attributes (an exception recorded would be one).
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any]

    def texts(self) -> list[str]:
        """Everything readable this span carries, for checks of what must not be in it."""
        events = [str(part) for name, attributes in self.events for part in (name, attributes)]
        return [
            self.name,
            self.status_message,
            *events,
            *map(str, self.attributes.values()),
            *map(str, self.resource.values()),
        ]


@dataclass
class Collector:
    url: str
    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: int = 0
    # Set whenever an export arrives.
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def children(self, parent: ReceivedSpan, name: str | None = None) -> list[ReceivedSpan]:
        return [
            s
            for s in self.spans
            if s.trace_id == parent.trace_id
            and s.parent_id == parent.span_id
            and (name is None or s.name == name)
        ]

    async def wait_for(self, found: Callable[[], Any], timeout: float = 20) -> Any:
        """Wait until `found()` is truthy (asked again as each export arrives); return it."""
        async with asyncio.timeout(timeout):
            while not (result := found()):
                self.arrived.clear()
                await self.arrived.wait()
        return result


@asynccontextmanager
async def otlp_collector() -> AsyncIterator[Collector]:
    port = free_port()
    collector = Collector(f"http://127.0.0.1:{port}/v1/traces")

    async def receive(request: web.Request) -> web.Response:
        raw = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        export = ExportTraceServiceRequest.FromString(raw)
        collector.exports += 1
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    collector.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=KINDS.get(span.kind, str(span.kind)),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            start=span.start_time_unix_nano,
                            end=span.end_time_unix_nano,
                            status=span.status.code,
                            status_message=span.status.message,
                            events=[
                                (e.name, {a.key: _value(a.value) for a in e.attributes}) for e in span.events
                            ],
                            resource=resource,
                        )
                    )
        collector.arrived.set()
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield collector
    finally:
        await runner.cleanup()
