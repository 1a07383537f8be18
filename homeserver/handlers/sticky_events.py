"""Sticky events (MSC4354) on the Client-Server side: the `/send` parameter that makes a
message sticky, and the periodic pass that drops expired rows (homeserver.storage.sticky_events
holds the rows; homeserver.sync.sticky delivers them)."""

from __future__ import annotations

from collections.abc import Mapping

from homeserver.errors import Codes, MatrixError
from homeserver.handlers.leader_jobs import PeriodicJob
from homeserver.server import HomeServer
from homeserver.storage.sticky_events import PARAM, StickyEventStore
from homeserver.sync.sticky import StickySection

# Expired rows are deleted this often (readers skip them before that).
CLEANUP_INTERVAL_S = 600.0


def parse_duration(query: Mapping[str, str]) -> int | None:
    """The sticky duration a `/send` asks for (None: not sticky). Longer than an hour is
    accepted and counts as an hour, as Synapse does."""
    raw = query.get(PARAM)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise MatrixError(400, Codes.INVALID_PARAM, f"{PARAM} must be a whole number") from None
    if not 0 <= value < 2**53:
        raise MatrixError(400, Codes.INVALID_PARAM, f"{PARAM} must be a whole number from 0 to 2^53 - 1")
    return value


class StickyCleanup(PeriodicJob):
    """Deletes expired sticky rows, on one worker at a time (the leader of "sticky-events")."""

    def __init__(self, hs: HomeServer) -> None:
        super().__init__(hs, "sticky-events", CLEANUP_INTERVAL_S, first_delay_s=60.0)
        self.store = StickyEventStore(hs.db)

    async def run_once(self, now: int | None = None) -> int:
        return await self.store.delete_expired(self.hs.clock.time_ms() if now is None else now)


def setup(hs: HomeServer) -> None:
    """Turn on /sync's sticky section and the cleanup, when sticky events are on."""
    if not hs.config.sticky_events.enabled:
        return
    hs.sync.sticky = StickySection(hs.events, hs.clock, hs.accounts.erased)
    hs.background.append(StickyCleanup(hs))
