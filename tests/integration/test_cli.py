"""The `sotto` command line, run as real subprocesses in a scratch directory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.support.server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def sotto(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "homeserver.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def configured(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    result = sotto(tmp_path, "generate-config", "--server-name", f"127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    config = tmp_path / "config" / "homeserver.yaml"
    # Fast password hashing for the test, and token registration switched on.
    data = yaml.safe_load(config.read_text())
    data["bcrypt_rounds"] = 4
    data["registration"].update(enabled=True, requires_token=True)
    config.write_text(yaml.safe_dump(data))
    return tmp_path, port


def test_generate_config(tmp_path: Path) -> None:
    result = sotto(tmp_path, "generate-config", "--server-name", "example.org")
    assert result.returncode == 0, result.stderr
    config = tmp_path / "config" / "homeserver.yaml"
    key = tmp_path / "data" / "signing.key"
    assert 'server_name: "example.org"' in config.read_text()
    assert "port: 8008" in config.read_text()
    assert key.read_text().startswith("ed25519 ")
    assert key.stat().st_mode & 0o077 == 0 and config.stat().st_mode & 0o077 == 0
    # A random secret for registration by shared secret (register_new_matrix_user).
    secret = yaml.safe_load(config.read_text())["registration"]["shared_secret"]
    assert isinstance(secret, str) and len(secret) >= 32

    refused = sotto(tmp_path, "generate-config", "--server-name", "other.org")
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert 'server_name: "example.org"' in config.read_text()

    original_key = key.read_text()
    forced = sotto(tmp_path, "generate-config", "--server-name", "other.org:9000", "--force")
    assert forced.returncode == 0, forced.stderr
    assert 'server_name: "other.org:9000"' in config.read_text() and "port: 9000" in config.read_text()
    # The signing key survives a regenerated config.
    assert key.read_text() == original_key


def test_commands_need_a_config(tmp_path: Path) -> None:
    result = sotto(tmp_path, "migrate")
    assert result.returncode == 1 and "generate-config" in result.stderr


def test_register_user_errors(configured: tuple[Path, int]) -> None:
    cwd, _ = configured
    assert sotto(cwd, "register-user", "bob", "--password-stdin", stdin="pw\n").returncode == 0
    again = sotto(cwd, "register-user", "bob", "--password-stdin", stdin="pw\n")
    assert again.returncode == 1 and "M_USER_IN_USE" in again.stderr
    empty = sotto(cwd, "register-user", "carol", "--password-stdin", stdin="\n")
    assert empty.returncode == 1 and "empty" in empty.stderr
    foreign = sotto(cwd, "register-user", "@dan:elsewhere.org", "--password-stdin", stdin="pw\n")
    assert foreign.returncode == 1
    missing_flag = sotto(cwd, "register-user", "erin")
    assert missing_flag.returncode == 2


async def test_migrate_register_serve_login(configured: tuple[Path, int]) -> None:
    cwd, port = configured
    migrated = sotto(cwd, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    created = sotto(
        cwd,
        "register-user",
        f"@alice:127.0.0.1:{port}",
        "--password-stdin",
        "--admin",
        stdin="correct horse\n",
    )
    assert created.returncode == 0, created.stderr
    assert f"@alice:127.0.0.1:{port}" in created.stdout
    made = sotto(cwd, "create-registration-token", "--uses", "1")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "homeserver.cli",
        "serve",
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith(f"Sotto is listening on http://127.0.0.1:{port}"), line
        base = f"http://127.0.0.1:{port}/_matrix/client/v3"
        async with aiohttp.ClientSession() as http:
            async with http.post(
                base + "/login",
                json={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "alice"},
                    "password": "correct horse",
                },
            ) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                assert body["user_id"] == f"@alice:127.0.0.1:{port}"
            # The token made by the CLI lets exactly one person register.
            async with http.post(
                base + "/register",
                json={
                    "username": "newbie",
                    "password": "pw",
                    "auth": {"type": "m.login.registration_token", "token": token},
                },
            ) as resp:
                body = await resp.json()
                assert resp.status == 401 and body["completed"] == ["m.login.registration_token"], body
            async with http.post(
                base + "/register", json={"auth": {"type": "m.login.dummy", "session": body["session"]}}
            ) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                assert body["user_id"] == f"@newbie:127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
