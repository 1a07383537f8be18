"""A user's own message rate limit, set by a server admin (Synapse's override_ratelimit)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest

from tests.security.test_admin_api import A1, user
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

LIMITS = {
    "enabled": True,
    "messages_per_second": 0.01,
    "messages_burst": 2,
    "joins_per_second": 0.01,
    "joins_burst": 3,
}


@pytest.fixture
async def limited(tmp_path: object) -> AsyncIterator[RunningServer]:
    async with run_server(str(tmp_path), rate_limits=LIMITS) as srv:
        yield srv


async def sends(client: RawClient, room: str, n: int, prefix: str) -> list[int]:
    out = []
    for i in range(n):
        status, _ = await client.request(
            "PUT",
            f"/rooms/{quote(room)}/send/m.room.message/{prefix}{i}",
            json={"msgtype": "m.text", "body": "x"},
        )
        out.append(status)
    return out


async def test_an_admin_lifts_or_sets_a_users_limit(
    limited: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(limited, http, "root", admin=True)
    bot = await user(limited, http, "bot")
    bob = await user(limited, http, "bob")
    room = await bot.room_with(bob)
    path = f"{A1}/users/{quote(bot.user_id)}/override_ratelimit"
    assert await admin.ok("GET", path) == {}
    assert await sends(bot, room, 3, "a") == [200, 200, 429]

    assert await admin.ok("POST", path, json={}) == {"messages_per_second": 0, "burst_count": 0}
    assert await sends(bot, room, 5, "b") == [200] * 5
    # 0 and 0 lift the user's other limits too (the bot has spent its joins making rooms).
    for _ in range(3):
        await bot.create_room()
    assert await admin.ok("POST", path, json={"messages_per_second": 1, "burst_count": 3}) == {
        "messages_per_second": 1,
        "burst_count": 3,
    }
    # A burst of 3 at one a second: ten quick sends cannot all pass (nor the first 3 fail).
    statuses = await sends(bot, room, 10, "c")
    assert statuses[:3] == [200] * 3 and 429 in statuses
    assert await sends(bob, room, 3, "d") == [200, 200, 429]  # others keep the server's limits

    assert await admin.ok("DELETE", path) == {}
    assert await admin.ok("GET", path) == {}
    assert await sends(bot, room, 1, "e") == [429]  # back to the server's, still spent

    for body in ({"messages_per_second": -1}, {"burst_count": "10"}, {"burst_count": True}):
        status, out = await admin.request("POST", path, json=body)
        assert (status, out["errcode"]) == (400, "M_BAD_JSON")
    status, out = await admin.request(
        "GET", f"{A1}/users/{quote('@nobody:' + limited.server_name)}/override_ratelimit"
    )
    assert status == 404
