"""A third implementation: matrix-js-sdk with its Rust crypto (WASM) in Node exchanges
encrypted messages with a matrix-nio client through Sotto.

The Node packages are installed into tests/js/ on first run (`npm ci`); the test is
skipped only when npm is not installed at all.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from homeserver.api.sliding_sync import SLIDING_SYNC_KEY
from tests.integration.e2ee.nio_helpers import NioUser, nio_login
from tests.support.http import RawClient
from tests.support.server import RunningServer

JS_DIR = Path(__file__).resolve().parents[1] / "js"


def ensure_js_sdk() -> str:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    node = shutil.which("node")
    assert node is not None, "npm is installed but node is not"
    if not (JS_DIR / "node_modules" / "matrix-js-sdk" / "package.json").exists():
        command = "ci" if (JS_DIR / "package-lock.json").exists() else "install"
        subprocess.run(
            [npm, command, "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            check=True,
            timeout=900,
            stdout=subprocess.DEVNULL,
        )
    return node


async def step_until(bob: NioUser, done: asyncio.Future[str], what: str, rounds: int = 200) -> str:
    for _ in range(rounds):
        if done.done():
            return done.result()
        await bob.step(timeout=200)
    raise AssertionError(f"the js-sdk client never reported {what}")


@pytest.mark.parametrize("sync", ["v3", "sliding"])
async def test_js_sdk_and_nio_exchange_encrypted_messages(
    server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path, sync: str
) -> None:
    """With `sliding`, the js-sdk client syncs with sliding sync (MSC4186), as Element X does."""
    node = ensure_js_sdk()
    bob = await nio_login(server, str(tmp_path / "stores"), "bob")
    js_login = await server.login("jsuser")
    expected = f"from-nio-{secrets.token_hex(6)}"
    reply = f"from-js-{secrets.token_hex(6)}"
    stderr_lines: list[str] = []
    proc: asyncio.subprocess.Process | None = None
    try:
        room = await bob.create_encrypted_room([js_login["user_id"]])
        env = {
            **os.environ,
            "HS_URL": server.base_url,
            "USER_ID": js_login["user_id"],
            "ACCESS_TOKEN": js_login["access_token"],
            "DEVICE_ID": js_login["device_id"],
            "ROOM_ID": room,
            "EXPECT_BODY": expected,
            "REPLY_BODY": reply,
            "PASSWORD": "password",
            "SLIDING_SYNC": "1" if sync == "sliding" else "0",
        }
        proc = await asyncio.create_subprocess_exec(
            node,
            "e2ee_client.mjs",
            cwd=JS_DIR,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        loop = asyncio.get_running_loop()
        steps: dict[str, asyncio.Future[str]] = {
            k: loop.create_future() for k in ("READY", "GOT", "SENT", "XSIGNED")
        }

        async def read_stdout() -> None:
            assert proc is not None and proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith("@@"):
                    name, _, detail = line[2:].partition(" ")
                    if name in steps and not steps[name].done():
                        steps[name].set_result(detail)

        async def read_stderr() -> None:
            assert proc is not None and proc.stderr is not None
            async for raw in proc.stderr:
                stderr_lines.append(raw.decode(errors="replace"))
                del stderr_lines[:-100]

        readers = [asyncio.create_task(read_stdout()), asyncio.create_task(read_stderr())]
        try:
            await step_until(bob, steps["READY"], "READY")
            # Wait until nio knows the js-sdk device's keys, then send it an encrypted message.
            for _ in range(100):
                if js_login["device_id"] in bob.client.device_store[js_login["user_id"]]:
                    break
                await bob.step(timeout=200)
            await bob.send_text(room, expected)
            assert await step_until(bob, steps["GOT"], "GOT") == expected
            await step_until(bob, steps["SENT"], "SENT")
            await bob.wait_for_text(room, reply)
            assert await step_until(bob, steps["XSIGNED"], "XSIGNED") == "true"
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            # Its cross-signing identity is visible to another user, and its device is signed by it.
            js_user, js_device = js_login["user_id"], js_login["device_id"]
            raw = RawClient(http, server.base_url, bob.client.access_token, bob.user_id)
            query = await raw.ok("POST", "/keys/query", json={"device_keys": {js_user: []}})
            ssk = query["self_signing_keys"][js_user]
            ((ssk_id, _),) = ssk["keys"].items()
            assert ssk_id in query["device_keys"][js_user][js_device]["signatures"][js_user]
            assert js_user in query["master_keys"][js_user]["signatures"]
            assert js_user not in query["user_signing_keys"]
            # The client did use the sync it was given.
            assert len(server.runner.app[SLIDING_SYNC_KEY].connections) == (1 if sync == "sliding" else 0)
        finally:
            for reader in readers:
                reader.cancel()
    except BaseException:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        print("node stderr:\n" + "".join(stderr_lines))
        raise
    finally:
        await bob.close()
