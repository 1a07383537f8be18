"""Prometheus metrics at /metrics (when enabled in config)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Gauge, generate_latest

from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    if not hs.config.metrics_enabled:
        return
    # Per-app registry: several servers may run in one process (tests), each with its own gauges.
    registry = CollectorRegistry()
    waiting = Gauge("sotto_sync_waiting", "Long-polling /sync requests currently waiting", registry=registry)
    stream = Gauge("sotto_stream_position", "Current committed stream position", registry=registry)
    waiting.set_function(lambda: hs.notifier.waiting)
    stream.set_function(lambda: hs.db.current_stream_id)

    async def metrics(request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(REGISTRY) + generate_latest(registry))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    app.router.add_routes([web.get("/metrics", metrics)])
