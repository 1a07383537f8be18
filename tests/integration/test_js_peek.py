"""matrix-js-sdk previews a world-readable room without joining it (`peekInRoom`, as
Element's room preview does): the room's name and history, then a message sent while it
watches (tests/js/peek_client.mjs)."""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp

from tests.integration.test_e2ee_js import JS_DIR, ensure_js_sdk
from tests.support.http import RawClient
from tests.support.server import RunningServer


async def test_js_sdk_peeks_into_a_world_readable_room(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    node = ensure_js_sdk()
    owner_id = await server.register("owner")
    token, _ = await server.hs.auth.create_session(owner_id, None, None)
    owner = RawClient(http, server.base_url, token, owner_id)
    readable = {"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}
    room = await owner.create_room(preset="public_chat", name="Preview me", initial_state=[readable])
    for i in range(3):
        await owner.send(room, f"history {i}", f"h{i}")
    visitor = await server.login("visitor")
    env = {
        **os.environ,
        "HS_URL": server.base_url,
        "USER_ID": visitor["user_id"],
        "ACCESS_TOKEN": visitor["access_token"],
        "DEVICE_ID": visitor["device_id"],
        "ROOM_ID": room,
        "EXPECT_BODY": "sent while previewing",
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        "peek_client.mjs",
        cwd=JS_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        steps: dict[str, str] = {}
        async with asyncio.timeout(60):
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").strip()
                if not line.startswith("@@"):
                    continue
                name, _, detail = line[2:].partition(" ")
                steps[name] = detail
                if name == "PEEKED":
                    # Once its first /events poll waits (it starts from "now", with no token).
                    for _ in range(200):
                        if server.hs.notifier.waiting:
                            break
                        await asyncio.sleep(0.05)
                    await owner.send(room, "sent while previewing", "live")
                if name == "LIVE":
                    break
            assert await proc.wait() == 0
        peeked = json.loads(steps["PEEKED"])
        assert peeked["name"] == "Preview me"
        assert peeked["bodies"] == ["history 0", "history 1", "history 2"]
        assert steps["LIVE"] == "sent while previewing"
        # The visitor never joined.
        assert await server.hs.events.get_membership(room, visitor["user_id"]) is None
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        print("node stderr:\n" + (await proc.stderr.read()).decode(errors="replace")[-4000:])
        raise
