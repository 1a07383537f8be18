"""Faults: kill -9 in the middle of writes, and a full disk under the media store and the
database. After each, every acknowledged event is present exactly once, nothing
half-written is visible, and the server recovers on its own.

`sotto serve` runs as a real subprocess on SQLite. The full disk is a small tmpfs mounted
over the data directory when the test may mount (root); otherwise RLIMIT_FSIZE on the
server process stands in for it (media only: a file may not grow past a limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.security.process import SottoProcess, limit_file_size

PASSWORD = "fault-Pa55"


class Client:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self.http = http
        self.base = base_url + "/_matrix/client/v3"
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        url = path if path.startswith("http") else self.base + path
        headers = {**self.headers, **kw.pop("headers", {})}
        async with self.http.request(method, url, json=body, headers=headers, **kw) as resp:
            return resp.status, await resp.json(content_type=None)

    async def send(self, room: str, txn: str, body: str) -> tuple[int, Any]:
        return await self.call(
            "PUT", f"/rooms/{quote(room)}/send/m.room.message/{txn}", {"msgtype": "m.text", "body": body}
        )

    async def history(self, room: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(100):
            params = {"dir": "b", "limit": "100", **({"from": token} if token else {})}
            status, page = await self.call("GET", f"/rooms/{quote(room)}/messages", params=params)
            assert status == 200, page
            events.extend(page["chunk"])
            token = page.get("end")
            if not page["chunk"] or token is None:
                return events
        raise AssertionError("history did not end")


async def login(
    server: SottoProcess, http: aiohttp.ClientSession, name: str = "alice", device_id: str = "FAULTS"
) -> Client:
    # A fixed device ID: transaction IDs are scoped to the device, so a client that logs in
    # again after a crash keeps its retries idempotent only by keeping its device.
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": name},
        "password": PASSWORD,
        "device_id": device_id,
    }
    async with http.post(server.base_url + "/_matrix/client/v3/login", json=body) as resp:
        out = await resp.json()
        assert resp.status == 200, out
    return Client(http, server.base_url, out["access_token"])


def check_database(db: Path) -> None:
    """Structural integrity and no dangling references after a crash."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        for table in ("event_txns", "forward_extremities", "current_state"):
            dangling = conn.execute(
                f"SELECT COUNT(*) FROM {table} t LEFT JOIN events e ON e.event_id = t.event_id "
                "WHERE e.event_id IS NULL"
            ).fetchone()[0]
            assert dangling == 0, f"{table} points at events that were never stored"
        orphans = conn.execute(
            "SELECT COUNT(*) FROM events e LEFT JOIN rooms r ON r.room_id = e.room_id WHERE r.room_id IS NULL"
        ).fetchone()[0]
        assert orphans == 0


async def check_room(client: Client, room: str, acked: dict[str, str], extra_bodies: set[str]) -> None:
    """Every acknowledged event is stored, once; nothing else but `extra_bodies` appeared."""
    for event_id, body in acked.items():
        status, event = await client.call("GET", f"/rooms/{quote(room)}/event/{quote(event_id)}")
        assert status == 200, (event_id, event)
        assert event["content"]["body"] == body
    messages = [e for e in await client.history(room) if e["type"] == "m.room.message"]
    ids = [e["event_id"] for e in messages]
    bodies = [e["content"]["body"] for e in messages]
    assert len(ids) == len(set(ids)), "an event appears twice"
    assert len(bodies) == len(set(bodies)), "a message was stored twice"
    assert set(acked) <= set(ids)
    assert set(bodies) <= set(acked.values()) | extra_bodies


async def test_kill_9_during_writes(tmp_path: Path) -> None:
    server = SottoProcess(tmp_path, rate_limits={"enabled": False})
    assert server.cli("register-user", "alice", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    await server.start()
    acked: dict[str, str] = {}
    in_flight: dict[str, str] = {}  # txn -> body, sent without an answer
    try:
        async with aiohttp.ClientSession() as http:
            client = await login(server, http)
            status, out = await client.call("POST", "/createRoom", {})
            room = out["room_id"]
            counter = itertools.count()
            enough = asyncio.Event()

            async def writer() -> None:
                while True:
                    n = next(counter)
                    txn, body = f"txn-{n}", f"message {n}"
                    in_flight[txn] = body
                    try:
                        status, out = await client.send(room, txn, body)
                    except (TimeoutError, aiohttp.ClientError):
                        return
                    del in_flight[txn]
                    assert status == 200, out
                    acked[out["event_id"]] = body
                    if len(acked) >= 150:
                        enough.set()

            writers = [asyncio.create_task(writer()) for _ in range(8)]
            await asyncio.wait_for(enough.wait(), 60)
            server.kill()
            await asyncio.wait_for(asyncio.gather(*writers, return_exceptions=True), 30)
        assert len(acked) >= 150 and in_flight

        check_database(tmp_path / "data" / "homeserver.db")
        await server.start()
        async with aiohttp.ClientSession() as http:
            client = await login(server, http)
            await check_room(client, room, acked, set(in_flight.values()))
            # Retrying what was in flight is idempotent: each message ends up stored exactly once.
            for txn, body in in_flight.items():
                status, out = await client.send(room, txn, body)
                assert status == 200, out
                acked[out["event_id"]] = body
            await check_room(client, room, acked, set())
            # The room's DAG is whole: new events build on it and a fresh sync sees the room.
            status, out = await client.send(room, "after-restart", "after restart")
            assert status == 200, out
            status, sync = await client.call("GET", "/sync", params={"timeout": "0"})
            assert status == 200 and room in sync["rooms"]["join"]
    finally:
        server.stop()
    check_database(tmp_path / "data" / "homeserver.db")


# A full disk --------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of `size` at `path` if allowed; yields whether it did."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and not os.environ.get("SOTTO_TEST_NO_TMPFS"):
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        )
        mounted = result.returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


async def upload(client: Client, data: bytes) -> tuple[int, Any]:
    return await client.call(
        "POST",
        client.base.replace("/client/v3", "/media/v3") + "/upload",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )


def assert_clean_error(status: int, body: Any) -> None:
    assert status >= 400 and isinstance(body, dict) and isinstance(body.get("errcode"), str), (status, body)


async def test_disk_full(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with small_filesystem(data, "24m") as mounted:
        server = SottoProcess(tmp_path, rate_limits={"enabled": False})
        if not mounted:
            # No tmpfs: limit the size of any file the server writes instead (media only).
            server.preexec = limit_file_size(4 * 1024 * 1024)
        assert server.cli("register-user", "alice", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                client = await login(server, http)
                _, out = await client.call("POST", "/createRoom", {})
                room = out["room_id"]
                acked: dict[str, str] = {}
                status, out = await client.send(room, "before", "before the disk filled")
                assert status == 200
                acked[out["event_id"]] = "before the disk filled"
                status, out = await upload(client, b"small" * 100)
                assert status == 200, out

                if mounted:
                    filler = fill(data)
                    big = b"x" * (256 * 1024)
                else:
                    big = b"x" * (5 * 1024 * 1024)
                status, out = await upload(client, big)
                assert_clean_error(status, out)
                assert status == 507, (status, out)
                leftovers = (
                    list((data / "media" / "tmp").glob("*")) if (data / "media" / "tmp").exists() else []
                )
                assert leftovers == [], "a failed upload left a partial file behind"
                if mounted:
                    # The database is on the same full disk: writes fail cleanly or succeed durably.
                    failed: set[str] = set()
                    for i in range(20):
                        body = f"while full {i} " + "y" * 2000
                        status, out = await client.send(room, f"full-{i}", body)
                        if status == 200:
                            acked[out["event_id"]] = body
                        else:
                            assert_clean_error(status, out)
                            failed.add(body)
                    assert failed, "the disk never filled up"
                # Reads keep working.
                status, out = await client.call("GET", "/sync", params={"timeout": "0"})
                assert status == 200

                if mounted:
                    filler.unlink()
                status, out = await upload(client, b"after" * 100)
                assert status == 200, out
                status, out = await client.send(room, "after", "after space returned")
                assert status == 200, out
                acked[out["event_id"]] = "after space returned"
                await check_room(client, room, acked, set())
            # And all of it survives a crash.
            server.kill()
            await server.start()
            async with aiohttp.ClientSession() as http:
                await check_room(await login(server, http), room, acked, set())
        finally:
            server.stop()
        check_database(data / "homeserver.db")
        logs = server.logs()
        assert "out of storage" in logs or "storage full" in logs
        assert "Traceback" not in logs, logs[-3000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a tmpfs mount (root)")
def test_small_filesystem_helper(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", "1m") as mounted:
        assert mounted
        filler = fill(tmp_path / "fs")
        assert 900_000 < filler.stat().st_size <= 1_048_576
