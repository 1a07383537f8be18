"""OpenTelemetry traces, exported over OTLP/HTTP: off unless `tracing.enabled`.

Each server (each worker process) gets its own `Tracing`: a tracer provider with a batch
processor, so spans leave in the background (a thread posts them to the collector; a full
queue drops spans rather than grow). Nothing of OpenTelemetry is imported while tracing is
off, and the no-op `Tracing` costs a method call per span site.

What is traced:
- every request on the client and federation listeners (a server span named by method and
  route template, with its status and errcode: `middleware`), and the answer of a waiting
  long-poll woken by new data (`sync.answer`, linked to its request);
- the database transactions a request waits for (`db.read`, `db.write`), and the event
  creator's batches (`event.persist_batch`, linked to every request in the batch);
- what the server sends out (client spans): requests to other servers and to application
  services, whose context goes along in the `traceparent` header, notifications to push
  gateways, and messages forwarded to the worker owning their room (`worker.forward`,
  answered by the owner's `worker.forwarded`).
Work no request waits for (background loops) is traced only when it sends something out.

Never recorded: paths with their identifiers filled in, query strings, bodies, headers or
exception messages (an access token can travel in a query string; an SQL error carries its
parameters). Spans carry route templates, status codes, errcodes, destination server names
and exception type names.

An incoming `traceparent` is followed only with `tracing.accept_remote_context`: otherwise
any client could choose the trace its requests join and force them to be sampled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from aiohttp import web
from yarl import URL

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanContext, Tracer

    from homeserver.config import TracingConfig

log = logging.getLogger(__name__)

_NULL: AbstractContextManager[None] = contextlib.nullcontext()
# One export, its retries included, gives up after this long (its spans are dropped).
EXPORT_TIMEOUT_S = 10
# How long a stopping server waits for its last spans to be taken.
SHUTDOWN_WAIT_S = 2.0
Handler = Any  # aiohttp's handler type, as the other middlewares take it


class Tracing:
    """Tracing turned off: every span site is a no-op."""

    enabled = False

    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        *,
        parent: SpanContext | None = None,
        links: Sequence[SpanContext] = (),
        client: bool = False,
        root: bool = False,
    ) -> AbstractContextManager[Any]:
        """A child of the current span (see `Active.span`); does nothing here."""
        return _NULL

    def current(self) -> SpanContext | None:
        """The current span's context, to parent or link work done elsewhere (None: untraced)."""
        return None

    def inject(self, headers: dict[str, str]) -> None:
        """Add the current span's `traceparent` to outgoing request headers."""

    def extract(self, headers: Mapping[str, str]) -> SpanContext | None:
        """The span a `traceparent` among these headers names (None: none, or untraced)."""
        return None

    def middleware(self) -> Any:
        return None

    async def close(self) -> None:
        pass


DISABLED = Tracing()


class Active(Tracing):
    """Tracing on: spans go to `config.endpoint` through `provider`."""

    enabled = True

    def __init__(self, config: TracingConfig, provider: TracerProvider, exporter: SpanExporter) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.config = config
        self.provider = provider
        self.exporter = exporter
        self.tracer: Tracer = provider.get_tracer("sotto")
        self._trace = trace
        self._root = Context()
        self._propagator = TraceContextTextMapPropagator()

    def _live(self) -> bool:
        """Whether the current span may have children: it exists and has not ended. A task
        started while a request was handled keeps that request's span as its current one
        after the request ended (tasks copy their context)."""
        current = self._trace.get_current_span()
        return current.get_span_context().is_valid and getattr(current, "end_time", None) is None

    @contextlib.contextmanager
    def _span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None,
        context: Context | None,
        links: Sequence[SpanContext],
        kind: Any,
    ) -> Iterator[Span]:
        from opentelemetry.trace import Link, StatusCode

        with self.tracer.start_as_current_span(
            name,
            context=context,
            kind=kind,
            attributes=attributes,
            links=[Link(link) for link in links],
            record_exception=False,  # exception messages may carry secrets
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as e:
                if not isinstance(e, asyncio.CancelledError):
                    span.set_status(StatusCode.ERROR, type(e).__name__)
                    span.set_attribute("error.type", type(e).__name__)
                raise

    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        *,
        parent: SpanContext | None = None,
        links: Sequence[SpanContext] = (),
        client: bool = False,
        root: bool = False,
    ) -> AbstractContextManager[Any]:
        """A span for the block, a child of `parent` if given, else of the current span.
        Without a current span (or with one that has ended) it starts a trace of its own
        with `root`, and is not recorded otherwise: background loops' database reads would
        each be a trace. `links`: other spans this work was done for. `client`: a request
        to another service (its `inject`ed headers name this span)."""
        if parent is not None:
            context: Context | None = self._trace.set_span_in_context(
                self._trace.NonRecordingSpan(parent), self._root
            )
        elif self._live():
            context = None
        elif root:
            context = self._root
        else:
            return _NULL
        kind = self._trace.SpanKind.CLIENT if client else self._trace.SpanKind.INTERNAL
        return self._span(name, attributes, context, links, kind)

    def current(self) -> SpanContext | None:
        return self._trace.get_current_span().get_span_context() if self._live() else None

    def inject(self, headers: dict[str, str]) -> None:
        self._propagator.inject(headers)

    def extract(self, headers: Mapping[str, str]) -> SpanContext | None:
        context = self._propagator.extract(headers, context=self._root)
        found = self._trace.get_current_span(context).get_span_context()
        return found if found.is_valid else None

    def middleware(self) -> Any:
        return _middleware(self)

    async def close(self) -> None:
        """Send what is queued, for up to SHUTDOWN_WAIT_S: a collector that is away would
        otherwise hold the server's stop for the exporter's retries (12 s, measured)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def shut_down() -> None:
            try:
                self.provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop has gone
                    loop.call_soon_threadsafe(finished)

        # A daemon thread: the process never waits for it at exit.
        threading.Thread(target=shut_down, name="sotto-tracing-close", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), SHUTDOWN_WAIT_S)
        except TimeoutError:
            # Ends the exporter's retries; the spans it still held are dropped.
            self.exporter.shutdown()
            log.warning("the trace collector did not take the last spans in %s s; dropped", SHUTDOWN_WAIT_S)

    def server_span(self, request: web.Request) -> AbstractContextManager[Span]:
        """The span of a request on one of the listeners (see `_middleware`)."""
        remote = None
        if self.config.accept_remote_context:
            remote = self._propagator.extract(request.headers, context=self._root)
        route = _route(request)
        attributes = {
            "http.request.method": request.method,
            "url.scheme": request.scheme,
            "http.route": route or "",
        }
        name = f"{request.method} {route}" if route else request.method
        context = remote if remote is not None else self._root
        return self._span(name, attributes, context, (), self._trace.SpanKind.SERVER)


def endpoint_of(path: str) -> str:
    """An outgoing request's endpoint, without the identifiers after it (rooms, events,
    transactions, users) or its query: `/_matrix/federation/v1/send`."""
    return "/".join(path.split("?", 1)[0].split("/", 5)[:5])


def _route(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    route = resource.canonical
    # r0 and v3 share a route (homeserver.api.routing): name the version asked for.
    version = request.match_info.get("_ver")
    return route.replace("{_ver}", version) if version is not None else route


def _middleware(tracing: Active) -> Any:
    from opentelemetry.trace import StatusCode

    from homeserver import jsonutil
    from homeserver.api.detached import is_handed_over

    @web.middleware
    async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The error middleware inside answers every Matrix error; what escapes it (a
        # cancelled request) is recorded by the span itself (`_span`).
        with tracing.server_span(request) as span:
            resp: web.StreamResponse = await handler(request)
            if is_handed_over(resp):
                # A long-poll taken out of aiohttp (homeserver.api.detached): it is answered later.
                span.set_attribute("sotto.detached", True)
                return resp
            span.set_attribute("http.response.status_code", resp.status)
            if resp.status >= 400:
                body = getattr(resp, "body", None)
                if isinstance(body, bytes) and len(body) < 4096:
                    with contextlib.suppress(ValueError):
                        errcode = jsonutil.loads(body).get("errcode")
                        if isinstance(errcode, str):
                            span.set_attribute("matrix.errcode", errcode[:64])
            if resp.status >= 500:
                span.set_status(StatusCode.ERROR)
            return resp

    return tracing_middleware


def build_tracing(config: TracingConfig, server_name: str, instance: str | None = None) -> Tracing:
    """The server's `Tracing`: `DISABLED` unless `config.enabled`."""
    if not config.enabled:
        return DISABLED
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create(
        {
            "service.name": config.service_name,
            "service.instance.id": instance or f"{server_name}/{os.getpid()}",
            "matrix.server_name": server_name,
        }
    )
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        resource=resource,
        shutdown_on_exit=False,  # closed with the server (an atexit hook per server would pile up)
    )
    exporter = OTLPSpanExporter(
        endpoint=config.endpoint, headers=dict(config.headers), timeout=EXPORT_TIMEOUT_S
    )
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=config.export_delay_ms, max_queue_size=8192)
    )
    where = URL(config.endpoint).with_user(None)  # no credentials in the log
    log.info("Tracing on: spans go to %s (sampled: %s)", where, config.sample_ratio)
    return Active(config, provider, exporter)
