"""Several worker processes, and the health and readiness endpoints.

`setup(app, hs)` (an area of the app; safe to call twice) adds:
- GET /_sotto/health — liveness: the process answers (with its pid);
- GET /_sotto/ready — readiness: 200 when the database answers and, with Redis
  configured, the cross-worker subscriber is connected; 503 otherwise. Load balancers
  and Kubernetes route traffic on it;
- the Redis bridge (homeserver.sync.redis_bridge) as a background service when
  `redis.enabled`.

`supervise()` is `sotto serve --workers N`: it applies migrations once, then runs N
copies of `sotto serve` that share the listening port through SO_REUSEPORT (the kernel
spreads new connections over them). A worker that dies is restarted, after a delay that
grows while it keeps dying young. SIGTERM or SIGINT stops every worker gracefully.
Each worker is a full server; PostgreSQL keeps their writes in order and Redis wakes
their long-polls (see homeserver.storage.postgres and homeserver.sync.redis_bridge).
The supervisor also makes a private directory for the workers' Unix sockets, over which
a busy room's messages go to the worker that owns the room (homeserver.forwarding).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from aiohttp import web

from homeserver.api.http import json_response
from homeserver.config import Config, ConfigError
from homeserver.forwarding import Links, RoomForwarding, sockets_directory_ok
from homeserver.server import HomeServer, load_or_create_signing_key
from homeserver.sync.redis_bridge import RedisBridge

log = logging.getLogger(__name__)

BRIDGE_KEY = web.AppKey("sotto.redis_bridge", RedisBridge)
_INSTALLED = web.AppKey("sotto.workers_installed", bool)

# Restart backoff for a worker that keeps crashing soon after it starts.
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
# A worker that ran this long before dying is restarted at once.
HEALTHY_AFTER_S = 10.0
STOP_GRACE_S = 20.0


def setup(app: web.Application, hs: HomeServer) -> None:
    if app.get(_INSTALLED):
        return
    app[_INSTALLED] = True
    bridge: RedisBridge | None = None
    if hs.config.redis.enabled:
        bridge = RedisBridge(hs.config.redis.url, hs.config.redis.channel, hs.db, hs.notifier)
        app[BRIDGE_KEY] = bridge
        hs.invalidations.attach(bridge)
        hs.background.append(bridge)

    async def health(_request: web.Request) -> web.Response:
        return json_response({"status": "ok", "pid": os.getpid()})

    async def ready(_request: web.Request) -> web.Response:
        database = await hs.db.ping(timeout=2.0)
        body: dict[str, object] = {"database": database, "pid": os.getpid()}
        ok = database
        if bridge is not None:
            body["redis"] = bridge.connected
            ok = ok and bridge.connected
        body["ready"] = ok
        body["stream_position"] = hs.db.current_stream_id
        return json_response(body, status=200 if ok else 503)

    app.router.add_routes([web.get("/_sotto/health", health), web.get("/_sotto/ready", ready)])
    forwarding = forwarding_for(hs)
    if forwarding is not None:
        hs.background.append(forwarding)


def forwarding_for(hs: HomeServer) -> RoomForwarding | None:
    """This worker's message forwarding (homeserver.forwarding), when it is one of several
    (`sotto serve --workers N`, or separately started with `sockets` or `peers`); None
    otherwise."""
    w = hs.config.workers
    if w.index is None or w.count <= 1:
        return None
    max_body = hs.config.limits.max_request_bytes
    if w.peers:
        links = Links(peers=tuple(w.peers), secret=(w.secret or "").encode(), listen_address=w.listen_address)
        return RoomForwarding(hs.creator, hs.db, links, w.index, w.count, max_body)
    if not w.sockets:
        return None
    if not sockets_directory_ok(w.sockets):
        log.warning("%s is not a private directory of this user; messages are not forwarded", w.sockets)
        return None
    return RoomForwarding(hs.creator, hs.db, Links(directory=w.sockets), w.index, w.count, max_body)


# The supervisor -----------------------------------------------------------------------------


def check_worker_config(config: Config, count: int) -> None:
    if count < 1:
        raise ConfigError("--workers must be at least 1")
    if count == 1:
        return
    if not config.database.url.startswith("postgresql"):
        raise ConfigError("several workers need PostgreSQL (database.url: postgresql+asyncpg://...)")
    if not config.redis.enabled:
        raise ConfigError("several workers need Redis for notifications (redis.enabled: true)")


async def _migrate(config: Config) -> None:
    from homeserver.storage.engine import Database
    from homeserver.storage.migrate import migrate

    db = Database(config.database.url, config.base_dir)
    try:
        await migrate(db)
    finally:
        await db.close()


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    delay: float = RESTART_MIN_S
    restarts: int = 0
    history: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(self, config_path: str, count: int, argv_prefix: list[str] | None = None) -> None:
        self.config_path = config_path
        self.count = count
        self.argv_prefix = argv_prefix or [sys.executable, "-m", "homeserver.cli"]
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        # Private to this user (mkdtemp's mode is 0700): the workers trust what arrives there.
        self.sockets = tempfile.mkdtemp(prefix="sotto-workers-")

    def _spawn(self, w: _Worker) -> None:
        argv = [*self.argv_prefix, "serve", "--config", self.config_path, "--workers", str(self.count)]
        argv += ["--worker-index", str(w.index), "--worker-sockets", self.sockets]
        env = dict(os.environ)
        # The workers import this same package, wherever it lives (installed or a checkout).
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        w.proc = subprocess.Popen(argv, env=env)
        w.started = time.monotonic()
        w.history.append(w.proc.pid)
        log.info("worker %d started (pid %d)", w.index, w.proc.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        try:
            return self._run()
        finally:
            shutil.rmtree(self.sockets, ignore_errors=True)

    def _run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for w in self.workers:
            self._spawn(w)
        while not self.stopping:
            now = time.monotonic()
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None:
                    code = w.proc.returncode
                    lived = now - w.started
                    w.delay = RESTART_MIN_S if lived >= HEALTHY_AFTER_S else min(w.delay * 2, RESTART_MAX_S)
                    w.restart_at = now + (0 if lived >= HEALTHY_AFTER_S else w.delay)
                    log.warning(
                        "worker %d (pid %d) exited with %s after %.1fs; restarting",
                        w.index, w.proc.pid, code, lived,
                    )
                    w.proc = None
                if w.proc is None and now >= w.restart_at:
                    w.restarts += 1
                    self._spawn(w)
            time.sleep(0.1)
        return self._stop_all()

    def _stop_all(self) -> int:
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
        return 0


def supervise(config_path: str, config: Config, count: int) -> int:
    """Run `count` workers until SIGTERM/SIGINT; returns the exit status."""
    check_worker_config(config, count)
    # Done once here, so the workers do not race to create the key or the schema.
    load_or_create_signing_key(config.resolve_path(config.signing_key_path))
    if config.policy_server.enabled:
        from bridge.policy_server import load_or_create_policy_key

        load_or_create_policy_key(config.resolve_path(config.policy_server.signing_key_path))
    asyncio.run(_migrate(config))
    log.info("starting %d workers on port %d", count, config.listener.port)
    return Supervisor(config_path, count).run()
