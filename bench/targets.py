"""The servers under test, each run as subprocesses pinned to a chosen set of cores.

- `SottoTarget`: `sotto serve` on SQLite or PostgreSQL, one process or `--workers N`
  (PostgreSQL + Redis);
- `SynapseTarget`: Synapse (pinned version, own virtualenv under .cache/synapse-venv,
  installed once and shared with tests/federation) on SQLite or PostgreSQL, rate limits
  lifted, bcrypt cost as low as Sotto's, presence off;
- `BareTarget`: a bare aiohttp handler answering the send endpoint — the ceiling.

PostgreSQL databases are created fresh on the shared server (127.0.0.1:5432) and
dropped afterwards. Every server gets both a plain-HTTP client port and, when a CA is
given, a TLS federation port whose certificate that CA issued.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

from bench.client import Client, register_sotto
from tests.federation.support import CertAuthority
from tests.federation.synapse import SYNAPSE_VERSION, ensure_synapse
from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
SHARED_SECRET = "bench-shared-secret"


def _pin(cpus: set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


async def _create_pg_database(name: str, synapse: bool = False) -> str:
    conn = await asyncpg.connect(PG_ADMIN, timeout=10)
    try:
        extra = " ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" if synapse else ""
        await conn.execute(f'CREATE DATABASE "{name}"{extra}')
    finally:
        await conn.close()
    return name


async def _drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _ensure_psycopg2(python: Path) -> None:
    """Synapse's PostgreSQL driver, in Synapse's own virtualenv (installed once)."""
    check = subprocess.run([str(python), "-c", "import psycopg2"], capture_output=True, timeout=60)
    if check.returncode != 0:
        install = [str(python), "-m", "pip", "install", "-q", "psycopg2-binary"]
        subprocess.run(install, check=True, timeout=600)


def _db_name(target: str) -> str:
    return f"bench_{target}_{uuid.uuid4().hex[:6]}".replace("-", "_")


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the process's peak resident set since it started."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


async def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


@dataclass
class Target:
    name: str
    workdir: Path
    cpus: set[int] | None = None
    ca: CertAuthority | None = None

    def __post_init__(self) -> None:
        self.port = free_port()
        self.fed_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = self.workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_name(self) -> str:
        return f"127.0.0.1:{self.fed_port}"

    @property
    def kind(self) -> str:
        return "other"

    def describe(self) -> str:
        return self.name

    async def start(self) -> None:
        raise NotImplementedError

    async def new_user(self, session: aiohttp.ClientSession, localpart: str) -> Client:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The processes whose memory counts as this server's."""
        return [self.proc.pid] if self.proc is not None else []

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, env=env, preexec_fn=_pin(self.cpus)
        )

    async def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)
        self.proc = None


class SottoTarget(Target):
    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        database: str = "sqlite",
        workers: int = 1,
        cpus: set[int] | None = None,
        ca: CertAuthority | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name, workdir, cpus, ca)
        self.database = database
        self.workers = workers
        # More top-level config (e.g. app_services for the appservice profile).
        self.extra_config = extra_config or {}
        self.pg_name: str | None = None

    @property
    def kind(self) -> str:
        return "sotto"

    def describe(self) -> str:
        db = "PostgreSQL" if self.database == "postgres" else "SQLite"
        if self.workers > 1:
            return f"Sotto, {self.workers} workers, {db} + Redis"
        return f"Sotto, 1 process, {db}"

    async def start(self) -> None:
        if self.database == "postgres":
            self.pg_name = await _create_pg_database(
                f"bench_{self.name}_{uuid.uuid4().hex[:6]}".replace("-", "_")
            )
            url = (
                PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
                + f"/{self.pg_name}"
            )
        else:
            url = f"sqlite+aiosqlite:///{self.dir / 'homeserver.db'}"
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "signing_key_path": str(self.dir / "signing.key"),
            "media_store_path": str(self.dir / "media"),
            "log_level": "WARNING",
            "bcrypt_rounds": 4,
            "metrics_enabled": True,
            "listener": {"bind_address": "127.0.0.1", "port": self.port},
            "database": {"url": url},
            "redis": {
                "enabled": self.workers > 1,
                "url": REDIS_URL,
                "channel": f"bench-{uuid.uuid4().hex[:8]}",
            },
            "registration": {"enabled": True, "requires_token": False, "shared_secret": SHARED_SECRET},
            "rate_limits": {"enabled": False},
            "limits": {"max_sync_timeout_ms": 300_000},
        }
        if self.ca is not None:
            config["federation"] = {
                "enabled": True,
                "bind_address": "127.0.0.1",
                "port": self.fed_port,
                "tls_certificate_path": self.ca.cert_file,
                "tls_private_key_path": self.ca.key_file,
                "verify_certificates": True,
                "custom_ca_file": self.ca.ca_file,
                "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
                "retry_min_ms": 200,
                "retry_max_ms": 2000,
            }
        config.update(self.extra_config)
        path = self.dir / "homeserver.yaml"
        path.write_text(json.dumps(config, indent=1))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        argv = [sys.executable, "-m", "homeserver.cli", "serve", "--config", str(path)]
        if self.workers > 1:
            argv += ["--workers", str(self.workers)]
        self._spawn(argv, env)
        await wait_http(self.base_url + "/_sotto/ready", 60, self.proc)
        if self.workers > 1:
            await self._wait_workers()

    async def _wait_workers(self) -> None:
        deadline = time.monotonic() + 60
        while len(self.pids()) < self.workers or not await self._all_ready():
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not start")
            await asyncio.sleep(0.2)

    async def _all_ready(self) -> bool:
        seen: set[int] = set()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(self.workers * 10):
                try:
                    async with s.get(self.base_url + "/_sotto/ready") as resp:
                        if resp.status == 200:
                            seen.add(int((await resp.json())["pid"]))
                except aiohttp.ClientError:
                    pass
                if len(seen) >= self.workers:
                    return True
        return False

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        if self.workers == 1:
            return [self.proc.pid]
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def supervisor_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.workers > 1 else None

    async def new_user(self, session: aiohttp.ClientSession, localpart: str) -> Client:
        return await register_sotto(session, self.base_url, localpart)

    async def stop(self) -> None:
        await super().stop()
        if self.pg_name:
            await _drop_pg_database(self.pg_name)
            self.pg_name = None


class SynapseTarget(Target):
    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        database: str = "sqlite",
        cpus: set[int] | None = None,
        ca: CertAuthority | None = None,
    ) -> None:
        super().__init__(name, workdir, cpus, ca)
        self.database = database
        self.pg_name: str | None = None

    @property
    def kind(self) -> str:
        return "synapse"

    def describe(self) -> str:
        db = "PostgreSQL" if self.database == "postgres" else "SQLite"
        return f"Synapse {SYNAPSE_VERSION}, 1 process, {db}"

    def _config(self) -> dict[str, Any]:
        unlimited = {"per_second": 100000, "burst_count": 100000}
        if self.database == "postgres":
            assert self.pg_name
            database: dict[str, Any] = {
                "name": "psycopg2",
                "args": {
                    "user": "postgres",
                    "host": "127.0.0.1",
                    "port": 5432,
                    "database": self.pg_name,
                    "cp_min": 5,
                    "cp_max": 10,
                },
            }
        else:
            database = {"name": "sqlite3", "args": {"database": str(self.dir / "homeserver.db")}}
        listeners: list[dict[str, Any]] = [
            {
                "port": self.port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ]
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "pid_file": str(self.dir / "homeserver.pid"),
            "listeners": listeners,
            "database": database,
            "log_config": str(self._log_config()),
            "media_store_path": str(self.dir / "media"),
            "signing_key_path": str(self.dir / "signing.key"),
            "registration_shared_secret": SHARED_SECRET,
            "macaroon_secret_key": "bench-macaroon",
            "form_secret": "bench-form",
            "report_stats": False,
            "enable_registration": False,
            "bcrypt_rounds": 4,
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "rc_message": unlimited,
            "rc_registration": unlimited,
            "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
            "rc_joins": {"local": unlimited, "remote": unlimited},
            "rc_joins_per_room": unlimited,
            "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
            "rc_3pid_validation": unlimited,
            "rc_key_requests": unlimited,
            "rc_admin_redaction": unlimited,
            "rc_room_creation": unlimited,
            "rc_federation": {
                "window_size": 1000,
                "sleep_limit": 100000,
                "sleep_delay": 0,
                "reject_limit": 100000,
                "concurrent": 1000,
            },
            "federation_rr_transactions_per_room_per_second": 100000,
        }
        if self.ca is not None:
            listeners.append(
                {
                    "port": self.fed_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [{"names": ["client", "federation"], "compress": False}],
                }
            )
            config.update(
                tls_certificate_path=self.ca.cert_file,
                tls_private_key_path=self.ca.key_file,
                federation_custom_ca_list=[self.ca.ca_file],
                federation_verify_certificates=True,
                ip_range_whitelist=["127.0.0.0/8", "::1/128"],
                ip_range_blacklist=[],
            )
        return config

    def _log_config(self) -> Path:
        path = self.dir / "log.yaml"
        path.write_text(
            "version: 1\n"
            "formatters:\n  precise:\n    format: '%(asctime)s - %(name)s - %(levelname)s - %(message)s'\n"
            "handlers:\n  file:\n    class: logging.FileHandler\n    formatter: precise\n"
            f"    filename: {self.dir / 'homeserver.log'}\n"
            "root:\n  level: WARNING\n  handlers: [file]\n"
            "disable_existing_loggers: false\n"
        )
        return path

    async def start(self) -> None:
        python = await asyncio.to_thread(ensure_synapse)
        if self.database == "postgres":
            await asyncio.to_thread(_ensure_psycopg2, python)
            self.pg_name = await _create_pg_database(_db_name(self.name), synapse=True)
        path = self.dir / "homeserver.yaml"
        path.write_text(json.dumps(self._config(), indent=1))
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        await asyncio.to_thread(
            subprocess.run,
            [str(python), "-m", "synapse.app.homeserver", "-c", str(path), "--generate-keys"],
            check=True,
            timeout=120,
            capture_output=True,
            cwd=self.dir,
            env=env,
        )
        self._spawn([str(python), "-m", "synapse.app.homeserver", "-c", str(path)], env)
        await wait_http(self.base_url + "/_matrix/client/versions", 120, self.proc)

    async def new_user(self, session: aiohttp.ClientSession, localpart: str) -> Client:
        url = self.base_url + "/_synapse/admin/v1/register"
        async with session.get(url) as resp:
            nonce = (await resp.json())["nonce"]
        parts = (nonce, localpart, "benchpass", "notadmin")
        mac = hmac.new(SHARED_SECRET.encode(), b"\x00".join(p.encode() for p in parts), hashlib.sha1)
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": "benchpass",
            "admin": False,
            "mac": mac.hexdigest(),
        }
        async with session.post(url, json=body) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"Synapse registration failed: {data}")
        return Client(session, self.base_url, str(data["user_id"]), str(data["access_token"]))

    async def stop(self) -> None:
        await super().stop()
        if self.pg_name:
            await _drop_pg_database(self.pg_name)
            self.pg_name = None


class BareTarget(Target):
    """bench/bare_server.py: the send endpoint answered by a bare aiohttp handler."""

    @property
    def kind(self) -> str:
        return "bare"

    def describe(self) -> str:
        return "bare aiohttp handler (uvloop), 1 process"

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        self._spawn([sys.executable, "-m", "bench.bare_server", str(self.port)], env)
        await wait_http(self.base_url + "/health", 30, self.proc)

    async def new_user(self, session: aiohttp.ClientSession, localpart: str) -> Client:
        return Client(session, self.base_url, f"@{localpart}:bare", "bare-token")
