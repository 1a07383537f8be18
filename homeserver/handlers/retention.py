"""Message retention (MSC1763, as Synapse implements it): rooms' old messages are purged.

A room's `m.room.retention` state event may set `max_lifetime` (milliseconds); the server's
`retention.default_policy` covers rooms without one; `allowed_lifetime_min/max` bound what
a room may ask for. With `retention.enabled`, a job (one worker at a time: the leader of
"retention") purges, in every room with a lifetime, the messages older than it, as the admin
API's `purge_history` does with `delete_local_events`: state events, the room's newest
events and read receipts' targets stay (homeserver/storage/admin.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from homeserver.config import RetentionConfig
from homeserver.handlers.leader_jobs import PeriodicJob
from homeserver.server import HomeServer
from homeserver.storage.admin import AdminStore

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w|y)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_UNIT_MS["y"] = 365 * _UNIT_MS["d"]
DEFAULT_INTERVAL_MS = _UNIT_MS["d"]
# Times stay well inside the database's 64-bit integers.
MAX_DURATION_MS = 100_000 * _UNIT_MS["y"]


def parse_duration(value: Any, name: str) -> int | None:
    """Milliseconds from an integer or a string such as "30d" (Synapse's forms); None stays."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    else:
        m = _DURATION.match(value) if isinstance(value, str) else None
        if m is None:
            raise ValueError(f"{name}: expected milliseconds or a duration such as 30d, 12h, 1y")
        ms = int(m.group(1)) * _UNIT_MS[m.group(2) or "ms"]
    if not 0 < ms < MAX_DURATION_MS:
        raise ValueError(f"{name} must be positive and under 100,000 years")
    return ms


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    default_max_lifetime: int | None
    allowed_min: int | None
    allowed_max: int | None
    interval_ms: int

    @classmethod
    def from_config(cls, cfg: RetentionConfig) -> RetentionSettings:
        """ValueError for a setting that makes no sense."""
        if not isinstance(cfg.default_policy, dict):
            raise ValueError("default_policy must be a mapping")
        unknown = set(cfg.default_policy) - {"min_lifetime", "max_lifetime"}
        if unknown:
            raise ValueError(f"default_policy: unknown keys {sorted(unknown)}")
        parse_duration(cfg.default_policy.get("min_lifetime"), "default_policy.min_lifetime")
        default_max = parse_duration(cfg.default_policy.get("max_lifetime"), "default_policy.max_lifetime")
        allowed_min = parse_duration(cfg.allowed_lifetime_min, "allowed_lifetime_min")
        allowed_max = parse_duration(cfg.allowed_lifetime_max, "allowed_lifetime_max")
        if allowed_min is not None and allowed_max is not None and allowed_min > allowed_max:
            raise ValueError("allowed_lifetime_min is more than allowed_lifetime_max")
        if not isinstance(cfg.purge_jobs, list) or not all(isinstance(j, dict) for j in cfg.purge_jobs):
            raise ValueError("purge_jobs must be a list of mappings")
        intervals = [parse_duration(j.get("interval"), "purge_jobs[].interval") for j in cfg.purge_jobs]
        known = [i for i in intervals if i is not None]
        return cls(default_max, allowed_min, allowed_max, min(known) if known else DEFAULT_INTERVAL_MS)

    def max_lifetime(self, room_policy: Any) -> int | None:
        """The lifetime of a room's messages: its own (within the allowed bounds), else the
        server's default; None: kept for ever."""
        value = room_policy.get("max_lifetime") if isinstance(room_policy, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            return self.default_max_lifetime
        if self.allowed_min is not None:
            value = max(value, self.allowed_min)
        if self.allowed_max is not None:
            value = min(value, self.allowed_max)
        return value


class RetentionPurger(PeriodicJob):
    """The purge job: `run_once` is one pass; as a background service it runs every
    `interval_ms` while this worker leads "retention"."""

    def __init__(self, hs: HomeServer, store: AdminStore, settings: RetentionSettings) -> None:
        super().__init__(hs, "retention", settings.interval_ms / 1000)
        self.store = store
        self.settings = settings

    async def run_once(self, now: int | None = None) -> int:
        """Purge every room's messages past their lifetime; returns how many went."""
        now = self.hs.clock.time_ms() if now is None else now
        policies = await self.store.retention_policies()
        rooms = await self.store.room_ids()
        total = purged_rooms = 0
        for room_id in rooms:
            lifetime = self.settings.max_lifetime(policies.get(room_id))
            if lifetime is None:
                continue
            cut = await self.store.first_stream_at(room_id, now - lifetime)
            before = cut if cut is not None else self.hs.db.current_stream_id + 1
            deleted = 0
            while n := await self.store.purge_history_batch(room_id, before, local_too=True):
                deleted += n
            if deleted:
                total += deleted
                purged_rooms += 1
                self.hs.events.drop_room_caches(room_id)
        if total:
            log.info("retention: purged %d expired events in %d rooms", total, purged_rooms)
        return total


class RemoteMediaExpiry(PeriodicJob):
    """Drops media cached from other servers `lifetime_ms` after it was fetched, every hour,
    on one worker at a time (the leader of "remote-media-expiry")."""

    def __init__(self, hs: HomeServer, purge: Callable[[int], Awaitable[int]], lifetime_ms: int) -> None:
        super().__init__(hs, "remote-media-expiry", 3600.0)
        self.purge = purge
        self.lifetime_ms = lifetime_ms

    async def run_once(self, now: int | None = None) -> int:
        now = self.hs.clock.time_ms() if now is None else now
        return await self.purge(now - self.lifetime_ms)
