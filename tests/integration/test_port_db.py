"""`sotto port-db`: a server that ran on SQLite runs on PostgreSQL with the same data.

The port runs as the real command (a subprocess) between a real server on a SQLite file
and one on a fresh PostgreSQL database, whatever SOTTO_TEST_DATABASE says.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import aiohttp
import asyncpg

from tests.support.http import RawClient
from tests.support.postgres import fresh_database
from tests.support.server import RunningServer, run_server

REPO_ROOT = Path(__file__).resolve().parents[2]


def port_db(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "homeserver.cli", "port-db", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def signed_in(srv: RunningServer, http: aiohttp.ClientSession, name: str) -> RawClient:
    login = await srv.login(name)
    return RawClient(http, srv.base_url, login["access_token"], login["user_id"])


async def password_login(srv: RunningServer, http: aiohttp.ClientSession, name: str) -> RawClient:
    """Signs in over HTTP only: the account and its password hash must have been ported."""
    c = RawClient(http, srv.base_url)
    body = await c.ok(
        "POST",
        "/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": name},
            "password": "password",
        },
    )
    return RawClient(http, srv.base_url, body["access_token"], body["user_id"])


async def messages(c: RawClient, room: str) -> list[str]:
    out = await c.ok("GET", f"/rooms/{quote(room)}/messages", params={"dir": "b", "limit": "100"})
    return [e["content"]["body"] for e in out["chunk"] if e["type"] == "m.room.message"]


async def test_a_sqlite_server_moves_to_postgresql(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    sqlite_url = f"sqlite+aiosqlite:///{tmp_path / 'homeserver.db'}"
    async with run_server(str(tmp_path), database={"url": sqlite_url}) as first:
        name = first.server_name
        alice = await signed_in(first, http, "alice")
        bob = await signed_in(first, http, "bob")
        room = await alice.room_with(bob, name="Before the move")
        # More positions than one chunk of PostgreSQL's stream sequence (128).
        for i in range(150):
            await alice.send(room, f"message {i}", f"t{i}")
        await alice.ok("PUT", f"/directory/room/{quote('#moved:' + name)}", json={"room_id": room})
        await alice.ok("PUT", f"/user/{quote(alice.user_id)}/account_data/org.example.kept", json={"n": 1})
        async with http.post(
            f"{first.base_url}/_matrix/media/v3/upload",
            data=b"ported bytes",
            headers={"Authorization": f"Bearer {alice.token}", "Content-Type": "text/plain"},
        ) as resp:
            mxc = (await resp.json())["content_uri"]
        reported = await alice.send(room, "reported", "t-reported")
        for reason in ("one", "two"):
            await bob.ok("POST", f"/rooms/{quote(room)}/report/{quote(reported)}", json={"reason": reason})
        bob_since = (await bob.sync())["next_batch"]

    async with fresh_database() as pg_url:
        moved = port_db("--from", sqlite_url, "--to", pg_url)
        assert moved.returncode == 0, moved.stderr
        assert "events:" in moved.stdout and "Copied" in moved.stdout, moved.stdout
        # New positions come after every ported one (the server also takes fresh chunks at
        # start-up, which would hide a sequence left at its start in a small database).
        conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            top = await conn.fetchval("SELECT max(stream_id) FROM events")
            assert top > 300 and await conn.fetchval("SELECT last_value FROM stream_seq") >= top
        finally:
            await conn.close()

        # Nothing already in the target is overwritten; a resumed port skips what is complete.
        again = port_db("--from", sqlite_url, "--to", pg_url)
        assert again.returncode == 1 and "already holds data" in again.stderr, again.stderr
        resumed = port_db("--from", sqlite_url, "--to", pg_url, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert "events:" in resumed.stdout and "already copied" in resumed.stdout, resumed.stdout

        async with run_server(str(tmp_path), server_name=name, database={"url": pg_url}) as second:
            alice2 = await password_login(second, http, "alice")
            bob2 = await password_login(second, http, "bob")
            assert await messages(alice2, room) == ["reported"] + [
                f"message {i}" for i in reversed(range(51, 150))
            ]
            state = await alice2.ok("GET", f"/rooms/{quote(room)}/state/m.room.name")
            assert state == {"name": "Before the move"}
            assert (await alice2.ok("GET", f"/directory/room/{quote('#moved:' + name)}"))["room_id"] == room
            kept = await alice2.ok("GET", f"/user/{quote(alice.user_id)}/account_data/org.example.kept")
            assert kept == {"n": 1}
            media_path = f"/_matrix/client/v1/media/download/{mxc.removeprefix('mxc://')}"
            async with http.get(
                second.base_url + media_path, headers={"Authorization": f"Bearer {alice2.token}"}
            ) as resp:
                assert resp.status == 200 and await resp.read() == b"ported bytes"

            # Serial columns go on after the ported rows (a third report is a new row).
            await bob2.ok("POST", f"/rooms/{quote(room)}/report/{quote(reported)}", json={"reason": "three"})
            # The stream goes on above the ported positions: a token from the SQLite server
            # sees exactly what was sent after the move.
            await alice2.send(room, "after the move", "t-after")
            out = await bob2.sync(since=bob_since)
            timeline = out["rooms"]["join"][room]["timeline"]["events"]
            assert [e["content"]["body"] for e in timeline if e["type"] == "m.room.message"] == [
                "after the move"
            ]


async def test_the_port_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    sqlite_url = f"sqlite+aiosqlite:///{tmp_path / 'homeserver.db'}"
    async with fresh_database() as pg_url:
        backwards = port_db("--from", pg_url, "--to", sqlite_url)
        assert backwards.returncode == 1 and "SQLite database file" in backwards.stderr
        into_sqlite = port_db("--from", sqlite_url, "--to", f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
        assert into_sqlite.returncode == 1 and "must be a PostgreSQL" in into_sqlite.stderr

        # Values PostgreSQL cannot hold (SQLite keeps no length limits and holds NULs in text)
        # are all named before anything is copied; once mended, the port goes through.
        conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            assert port_db("--from", sqlite_url, "--to", pg_url).returncode == 0  # migrated, empty
            with sqlite3.connect(tmp_path / "homeserver.db") as lite:
                lite.executemany(
                    "INSERT INTO room_aliases (alias, room_id, creator) VALUES (?, ?, ?)",
                    [
                        ("#a\x00b:x", "!r:x", "@u:x"),
                        ("#" + "x" * 300 + ":x", "!r:x", "@u:x"),
                        ("#ok:x", "!r:x", "@u:x"),
                    ],
                )
                lite.execute(
                    "INSERT INTO users (user_id, is_admin, is_guest, deactivated, created_ts) "
                    "VALUES (?, 1, 0, 0, 0)",
                    ("@kept:x",),
                )
            failed = port_db("--from", sqlite_url, "--to", pg_url, "--resume")
            assert failed.returncode == 1 and "nothing was copied" in failed.stderr, failed.stderr
            assert "room_aliases.alias: a NUL character: 1 row" in failed.stderr
            assert "room_aliases.alias: longer than 255 characters: 1 row" in failed.stderr
            assert (
                "#ok:x" not in failed.stderr and "xxxx" not in failed.stderr
            )  # named by condition, not value
            assert await conn.fetchval("SELECT count(*) FROM room_aliases") == 0
            assert await conn.fetchval("SELECT count(*) FROM users") == 0

            with sqlite3.connect(tmp_path / "homeserver.db") as lite:
                lite.execute("DELETE FROM room_aliases WHERE alias <> '#ok:x'")
            mended = port_db("--from", sqlite_url, "--to", pg_url, "--resume")
            assert mended.returncode == 0, mended.stderr
            assert await conn.fetchval("SELECT alias FROM room_aliases") == "#ok:x"
            # Booleans arrive as booleans (SQLite stores 0 and 1).
            assert await conn.fetchval("SELECT is_admin FROM users WHERE user_id = '@kept:x'") is True
        finally:
            await conn.close()
