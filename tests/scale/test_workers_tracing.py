"""Tracing with `sotto serve --workers 2`: each worker process sends its own spans, named by
its index, and stopping the supervisor sends what they still held."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.scale.services import SottoProcesses
from tests.support.otlp_collector import otlp_collector

pytestmark = pytest.mark.timeout(120)


async def test_every_worker_sends_its_spans(workdir: Path, pg_url: str, redis_url: str) -> None:
    async with otlp_collector() as collector:
        procs = SottoProcesses(workdir, pg_url, redis_url)
        # Spans would wait ten minutes to be sent together: only the stop sends them.
        tracing = {"enabled": True, "endpoint": collector.url, "export_delay_ms": 600_000}
        procs.extra_config = {"tracing": tracing}
        procs.start_supervisor(2)
        try:
            await procs.wait_ready(distinct_pids=2)  # both workers answered /_sotto/ready
        finally:
            # In a thread: the collector, on this loop, must take the workers' last spans.
            await asyncio.to_thread(procs.stop)
        ready = [
            s
            for s in collector.named("GET /_sotto/ready")
            if s.kind == "server" and s.attributes["http.response.status_code"] == 200
        ]
        instances = {s.resource["service.instance.id"] for s in ready}
        assert instances == {f"{procs.server_name}/worker-0", f"{procs.server_name}/worker-1"}
