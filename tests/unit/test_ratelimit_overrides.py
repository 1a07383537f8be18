"""Per-user rate limit overrides: kept in memory, and forgotten by every worker when one
of them changes an override (the invalidation hub, here over an in-memory transport)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from homeserver.invalidation import Handler, Invalidations
from homeserver.storage.ratelimit_overrides import RateLimitOverrides
from tests.support.database import migrated_sqlite


class Bus:
    """Delivers a broadcast to every other hub's subscribers, as the Redis bridge does."""

    def __init__(self) -> None:
        self.handlers: list[tuple[int, str, Handler]] = []

    def transport(self, hub: int) -> Any:
        bus = self

        class Transport:
            def broadcast(self, topic: str, payload: Any) -> None:
                for owner, t, handler in bus.handlers:
                    if owner != hub and t == topic:
                        handler(payload)

            def subscribe(self, topic: str, handler: Handler) -> None:
                bus.handlers.append((hub, topic, handler))

        return Transport()


async def test_a_change_on_one_worker_reaches_the_other(tmp_path: Path) -> None:
    async with migrated_sqlite(tmp_path / "db.sqlite") as db:
        bus = Bus()
        hubs = [Invalidations(), Invalidations()]
        workers = [RateLimitOverrides(db, hub) for hub in hubs]
        for i, hub in enumerate(hubs):
            hub.attach(bus.transport(i))
        assert await workers[1].get("@bot:example.org") is None  # read, and kept
        await workers[0].set("@bot:example.org", (0, 0))
        assert await workers[1].get("@bot:example.org") == (0, 0)
        await workers[0].set("@bot:example.org", None)
        assert await workers[1].get("@bot:example.org") is None
