"""Message retention: rooms' messages past their lifetime (their m.room.retention, or the
server's default) are purged by the retention job; the bounds and durations of the config."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.api.admin import RETENTION_KEY
from homeserver.config import ConfigError, RetentionConfig, config_from_dict
from homeserver.handlers.retention import RetentionSettings, parse_duration
from tests.support.http import RawClient
from tests.support.server import run_server

HOUR = 3_600_000


async def bodies(client: RawClient, room: str) -> list[str]:
    page = await client.ok("GET", f"/rooms/{quote(room)}/messages", params={"dir": "b", "limit": "100"})
    return [e["content"].get("body") for e in reversed(page["chunk"]) if e["type"] == "m.room.message"]


async def test_the_job_purges_what_outlived_its_room_policy(
    tmp_path: object, http: aiohttp.ClientSession
) -> None:
    retention = {"enabled": True, "default_policy": {"max_lifetime": "1d"}, "allowed_lifetime_min": "1h"}
    async with run_server(str(tmp_path), retention=retention) as srv:
        user_id = await srv.register("alice")
        token, _ = await srv.hs.auth.create_session(user_id, None, None)
        alice = RawClient(http, srv.base_url, token, user_id)
        short = await alice.create_room(preset="public_chat")
        await alice.ok("PUT", f"/rooms/{quote(short)}/state/m.room.retention", json={"max_lifetime": 60_000})
        default = await alice.create_room(preset="public_chat")
        for room in (short, default):
            for i in range(3):
                await alice.send(room, f"m{i}", f"{room}-{i}")
        job = srv.runner.app[RETENTION_KEY]
        now = srv.hs.clock.time_ms()
        # The room's minute is raised to the allowed hour: nothing is old enough yet.
        assert await job.run_once(now + 30 * 60_000) == 0
        # After two hours the short-lived room loses all but its newest message; the other
        # room (a day, by default) keeps everything.
        assert await job.run_once(now + 2 * HOUR) == 2
        assert await bodies(alice, short) == ["m2"]
        assert await bodies(alice, default) == ["m0", "m1", "m2"]
        state = await alice.ok("GET", f"/rooms/{quote(short)}/state/m.room.retention")
        assert state == {"max_lifetime": 60_000}
        assert await job.run_once(now + 2 * 24 * HOUR) == 2
        assert await bodies(alice, default) == ["m2"]
        # The room goes on.
        await alice.send(short, "later", "later")
        assert await bodies(alice, short) == ["m2", "later"]


def test_settings() -> None:
    settings = RetentionSettings.from_config(
        RetentionConfig(
            enabled=True,
            default_policy={"max_lifetime": "30d"},
            allowed_lifetime_min="1d",
            allowed_lifetime_max="1y",
            purge_jobs=[{"interval": "12h"}, {"longest_max_lifetime": "3d", "interval": "6h"}],
        )
    )
    assert settings.interval_ms == 6 * HOUR
    assert settings.max_lifetime(None) == 30 * 24 * HOUR
    assert settings.max_lifetime({"max_lifetime": 1000}) == 24 * HOUR
    assert settings.max_lifetime({"max_lifetime": 10**13}) == 365 * 24 * HOUR
    assert settings.max_lifetime({"max_lifetime": "soon"}) == 30 * 24 * HOUR
    assert parse_duration(1500, "x") == 1500 and parse_duration("2w", "x") == 14 * 24 * HOUR
    assert RetentionSettings.from_config(RetentionConfig()).max_lifetime({}) is None


@pytest.mark.parametrize(
    "retention",
    [
        {"default_policy": {"max_lifetime": "forever"}},
        {"default_policy": {"max_lifetime": 0}},
        {"default_policy": {"max_lifetime": "99999999999999999999y"}},
        {"default_policy": {"max_age": "1d"}},
        {"allowed_lifetime_min": "2d", "allowed_lifetime_max": "1d"},
        {"purge_jobs": [{"interval": "often"}]},
        {"purge_jobs": "daily"},
    ],
)
def test_bad_settings_stop_startup(retention: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="retention"):
        config_from_dict({"server_name": "example.org", "retention": retention})
