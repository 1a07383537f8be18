"""Private PostgreSQL and Redis instances, and Sotto worker processes, for scale and fault tests.

Fault tests stop and restart their database and Redis; they get their own instances on
free ports (a throw-away PostgreSQL cluster made with initdb, a redis-server without
persistence) so nothing else using the machine's shared services is disturbed.
`SottoProcesses` runs `sotto serve` as real subprocesses: either one supervisor with
`--workers N` on one port, or N independent servers on N ports sharing one database
(the "behind a load balancer" deployment), so a test can talk to a chosen worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from homeserver.server import load_or_create_signing_key
from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[2]
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _pg_tool(name: str) -> str | None:
    for d in PG_BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


def private_services_available() -> bool:
    return bool(_pg_tool("initdb") and _pg_tool("pg_ctl") and shutil.which("redis-server"))


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (trust auth, loopback only) on a free port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sotto-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            # PostgreSQL refuses to run as root.
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *argv: str, timeout: float = 60) -> None:
        cmd = list(argv)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, timeout=timeout, capture_output=True)

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        initdb = _pg_tool("initdb")
        assert initdb
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        pg_ctl = _pg_tool("pg_ctl")
        assert pg_ctl
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run(pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        pg_ctl = _pg_tool("pg_ctl")
        assert pg_ctl
        self._run(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.admin_dsn, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)


class PrivateRedis:
    """A redis-server without persistence on a free port; stop() and start() keep the port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def write_config(directory: Path, port: int, db_url: str, redis_url: str | None, channel: str) -> Path:
    (directory / "config").mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "server_name": f"127.0.0.1:{port}",
        "signing_key_path": str(directory / "signing.key"),
        "media_store_path": str(directory / "media"),
        "log_level": "WARNING",
        "bcrypt_rounds": 4,
        "listener": {"bind_address": "127.0.0.1", "port": port},
        "database": {"url": db_url},
        "redis": {"enabled": redis_url is not None, "url": redis_url or "", "channel": channel},
        "registration": {"enabled": True, "requires_token": False, "shared_secret": "scale-secret"},
        "rate_limits": {"enabled": False},
        # Tests run their push gateway on loopback.
        "push": {"allowed_gateway_ranges": ["127.0.0.0/8"]},
    }
    path = directory / "config" / f"homeserver-{port}.yaml"
    # JSON is valid YAML.
    path.write_text(json.dumps(data, indent=1))
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


class SottoProcesses:
    """`sotto serve` subprocesses on one database: a supervisor, or independent servers."""

    def __init__(self, directory: Path, db_url: str, redis_url: str | None) -> None:
        self.dir = directory
        self.db_url = db_url
        self.redis_url = redis_url
        self.channel = f"sotto-test-{os.urandom(4).hex()}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.server_name = ""
        # More top-level config for every process (e.g. app_services).
        self.extra_config: dict[str, Any] = {}

    def _spawn(self, config: Path, port: int, *extra: str) -> None:
        log = open(self.dir / f"serve-{port}.log", "ab")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "homeserver.cli", "serve", "--config", str(config), *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(),
                cwd=self.dir,
            )
        )
        self.ports.append(port)

    def _first_config(self) -> tuple[Path, int]:
        port = free_port()
        config = write_config(self.dir, port, self.db_url, self.redis_url, self.channel)
        if self.extra_config:
            config.write_text(json.dumps({**json.loads(config.read_text()), **self.extra_config}))
        self.server_name = f"127.0.0.1:{port}"
        # Made once, before any worker starts, as `sotto serve --workers` does.
        load_or_create_signing_key(str(self.dir / "signing.key"))
        return config, port

    def start_supervisor(self, workers: int) -> None:
        """One port, `workers` processes under `sotto serve --workers`."""
        config, port = self._first_config()
        self._spawn(config, port, "--workers", str(workers))

    def start_independent(
        self, count: int, sockets: str | None = None, tcp_secret: str | None = None
    ) -> None:
        """`count` servers of one homeserver on separate ports (as behind a load balancer).

        They share the server name and signing key, so a token from one works on all.
        `sockets`: each is configured as worker i of `count` with that directory for
        forwarding (homeserver.forwarding); `tcp_secret`: over TCP on loopback instead, as
        workers on several hosts are."""
        config, port = self._first_config()
        data = json.loads(config.read_text())
        peers = [f"127.0.0.1:{free_port()}" for _ in range(count)]
        for i in range(count):
            if i:
                port = free_port()
                data["listener"]["port"] = port
            if sockets is not None:
                data["workers"] = {"count": count, "index": i, "sockets": sockets}
            elif tcp_secret is not None:
                data["workers"] = {"count": count, "index": i, "peers": peers, "secret": tcp_secret}
            path = self.dir / "config" / f"homeserver-{port}.yaml"
            path.write_text(json.dumps(data))
            self._spawn(path, port)

    def base_url(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    async def wait_ready(self, *, distinct_pids: int = 1, timeout: float = 40.0) -> set[int]:
        """Wait until every port answers /_sotto/ready with 200, from `distinct_pids` processes each."""
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        for i in range(len(self.ports)):
            pids: set[int] = set()
            while len(pids) < distinct_pids:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not ready: {self.tail()}")
                status, body = await probe(self.base_url(i), "/_sotto/ready")
                if status == 200:
                    pids.add(int(body["pid"]))
                else:
                    await asyncio.sleep(0.1)
            seen |= pids
        return seen

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def tail(self, lines: int = 30) -> str:
        out = ""
        for path in sorted(self.dir.glob("serve-*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out += f"--- {path.name}\n" + "\n".join(text) + "\n"
        return out


async def probe(base_url: str, path: str) -> tuple[int, Any]:
    """One request on a fresh connection (so SO_REUSEPORT may pick any worker)."""
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            s.get(base_url + path, timeout=aiohttp.ClientTimeout(total=5)) as resp,
        ):
            return resp.status, await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return 0, None
