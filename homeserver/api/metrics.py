"""Prometheus metrics at /metrics (when enabled in config), for the peers `metrics_allow` names."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.queue import OutboundQueue
from homeserver.api.sliding_sync import SLIDING_SYNC_KEY
from homeserver.api.sync import LONG_POLLS_KEY
from homeserver.appservice.sender import AppServiceSender
from homeserver.errors import Codes, MatrixError
from homeserver.forwarding import RoomForwarding
from homeserver.server import HomeServer


class _BatchCollector(Collector):
    """Group commits of messages: their mean size is messages / batches."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    def collect(self) -> Iterable[Metric]:
        creator = self.hs.creator
        yield CounterMetricFamily("sotto_message_batches", "Group commits of messages", creator.batches)
        yield CounterMetricFamily(
            "sotto_batched_messages", "Messages committed in group commits", creator.batched_messages
        )
        for service in self.hs.background:
            if isinstance(service, AppServiceSender):
                yield from (
                    CounterMetricFamily(name, doc, value)
                    for name, doc, value in (
                        (
                            "sotto_appservice_transactions",
                            "Transactions application services took",
                            service.sent_transactions,
                        ),
                        ("sotto_appservice_events", "Events in them", service.sent_events),
                        (
                            "sotto_appservice_failed_attempts",
                            "Attempts to send a transaction that failed (retried with backoff)",
                            service.failed_attempts,
                        ),
                    )
                )
        for service in self.hs.background:
            queue = getattr(service, "queue", None)
            if isinstance(queue, OutboundQueue):
                yield from _federation_metrics(queue)
        forwarding = creator.forwarder
        if isinstance(forwarding, RoomForwarding):
            # Labelled with the worker's index: the workers share a port, so a scrape reaches any.
            for name, doc, value in (
                (
                    "sotto_forwarded_messages",
                    "Messages sent to the worker owning their room",
                    forwarding.forwarded,
                ),
                (
                    "sotto_messages_created_for_workers",
                    "Messages created for another worker, in rooms this one owns",
                    forwarding.created_for_others,
                ),
                (
                    "sotto_forwarding_fallbacks",
                    "Messages created here because the worker owning their room could not be reached",
                    forwarding.fallbacks,
                ),
            ):
                family = CounterMetricFamily(name, doc, labels=["worker"])
                family.add_metric([str(forwarding.index)], value)
                yield family


def _federation_metrics(queue: OutboundQueue) -> Iterable[Metric]:
    """This worker's view of its transactions to other servers (one worker sends them)."""
    yield CounterMetricFamily(
        "sotto_federation_transactions", "Transactions other servers took", queue.sent_transactions
    )
    yield CounterMetricFamily(
        "sotto_federation_failed_transactions",
        "Attempts to send a transaction that failed (retried with backoff)",
        queue.failed_transactions,
    )
    yield GaugeMetricFamily(
        "sotto_federation_failing_destinations",
        "Destinations whose last transaction failed (see the admin API's federation destinations)",
        queue.failing_destinations(),
    )


def setup(app: web.Application, hs: HomeServer) -> None:
    if not hs.config.metrics_enabled:
        return
    # Per-app registry: several servers may run in one process (tests), each with its own gauges.
    registry = CollectorRegistry()
    waiting = Gauge("sotto_sync_waiting", "Long-polling /sync requests currently waiting", registry=registry)
    stream = Gauge("sotto_stream_position", "Current committed stream position", registry=registry)
    detached = Gauge(
        "sotto_sync_detached",
        "Waiting /sync requests detached from the HTTP server (homeserver.api.detached)",
        registry=registry,
    )
    sliding = Gauge(
        "sotto_sliding_sync_connections",
        "Sliding sync connections this process holds (homeserver.sync.sliding)",
        registry=registry,
    )
    sliding.set_function(lambda: len(handler.connections) if (handler := app.get(SLIDING_SYNC_KEY)) else 0)
    waiting.set_function(lambda: hs.notifier.waiting)
    detached.set_function(lambda: len(polls.parked) if (polls := app.get(LONG_POLLS_KEY)) else 0)
    stream.set_function(lambda: hs.db.current_stream_id)
    registry.register(_BatchCollector(hs))

    allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in hs.config.metrics_allow]

    def peer_allowed(request: web.Request) -> bool:
        # The connection's own peer, not X-Forwarded-For: a proxy in front must not pass
        # /metrics through (the nginx example only forwards the Matrix paths).
        try:
            peer = ipaddress.ip_address((request.remote or "").split("%")[0])
        except ValueError:
            return False  # a Unix socket or an unknown peer
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in net for net in allowed)

    async def metrics(request: web.Request) -> web.Response:
        if not peer_allowed(request):
            raise MatrixError(403, Codes.FORBIDDEN, "Metrics are not available to this address")
        resp = web.Response(body=generate_latest(REGISTRY) + generate_latest(registry))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    app.router.add_routes([web.get("/metrics", metrics)])
