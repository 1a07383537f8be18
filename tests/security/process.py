"""`sotto serve` as a real subprocess on a scratch directory, for log and fault tests.

The server's stdout and stderr go to files in the directory, so a test can read every line
the operator would see; `kill()` is kill -9, `restart()` starts again on the same data.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cli(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "homeserver.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class SottoProcess:
    def __init__(self, root: Path, **overrides: Any) -> None:
        self.root = root
        self.port = free_port()
        self.server_name = f"127.0.0.1:{self.port}"
        self.base_url = f"http://127.0.0.1:{self.port}"
        result = _cli(root, "generate-config", "--server-name", self.server_name)
        assert result.returncode == 0, result.stderr
        self.config_path = root / "config" / "homeserver.yaml"
        data = yaml.safe_load(self.config_path.read_text())
        data["bcrypt_rounds"] = 4
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        self.config_path.write_text(yaml.safe_dump(data))
        self.config = data
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        # Applied in the child before exec (e.g. resource limits).
        self.preexec: Callable[[], None] | None = None
        # For a TLS listener: how the readiness probe verifies the server.
        self.ssl: ssl.SSLContext | bool = True

    @property
    def log_path(self) -> Path:
        return self.root / f"server-{self.runs}.log"

    def logs(self) -> str:
        paths = [self.root / f"server-{i}.log" for i in range(1, self.runs + 1)]
        return "".join(p.read_text(errors="replace") for p in paths)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return _cli(self.root, *args, "--config", str(self.config_path), stdin=stdin)

    def spawn(self) -> subprocess.Popen[bytes]:
        self.runs += 1
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "homeserver.cli", "serve", "--config", str(self.config_path)],
                cwd=self.root,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec,
            )
        return self.proc

    async def start(self, timeout: float = 30) -> None:
        proc = self.spawn()
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited with {proc.returncode}:\n{self.logs()[-3000:]}")
                try:
                    async with http.get(self.base_url + "/_matrix/client/versions", ssl=self.ssl) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError("server did not start:\n" + self.logs()[-3000:])
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """kill -9: no shutdown handlers, no flushing."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)

    async def restart(self) -> None:
        self.stop()
        await self.start()


def limit_file_size(max_bytes: int) -> Callable[[], None]:
    """A preexec hook: files the server writes may not grow past `max_bytes` (RLIMIT_FSIZE)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
        # Writing past the limit raises EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply
