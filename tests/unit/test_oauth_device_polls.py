"""RFC 8628's `slow_down`: a device grant remembers its last poll and its interval, in a
real (migrated) SQLite database, with the clock given explicitly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from homeserver.handlers.oauth import DEVICE_POLL_INTERVAL_S, DEVICE_POLL_LEEWAY_MS
from homeserver.storage.oauth import DeviceGrant, OAuthStore
from tests.support.database import migrated_sqlite

T0 = 1_000_000


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[OAuthStore]:
    async with migrated_sqlite(tmp_path / "oauth.db") as db:
        s = OAuthStore(db)
        for code in ("a", "b"):
            user_code = f"{code.upper()}BCD-FGHJ"
            grant = DeviceGrant(code, user_code, "client", "DEV", "scope", T0 + 600_000, None, False)
            await s.add_device_grant(grant, T0)
        yield s


async def test_polls_at_the_interval_pass_and_early_ones_slow_the_client(store: OAuthStore) -> None:
    interval_ms = DEVICE_POLL_INTERVAL_S * 1000
    t = T0
    assert await store.note_poll("a", t, DEVICE_POLL_LEEWAY_MS) is None  # the first poll
    t += interval_ms - DEVICE_POLL_LEEWAY_MS  # early, but within the leeway
    assert await store.note_poll("a", t, DEVICE_POLL_LEEWAY_MS) is None
    t += 1000
    assert await store.note_poll("a", t, DEVICE_POLL_LEEWAY_MS) == DEVICE_POLL_INTERVAL_S + 5
    # The longer interval holds for the polls after it (RFC 8628 section 3.5).
    t += interval_ms
    assert await store.note_poll("a", t, DEVICE_POLL_LEEWAY_MS) == DEVICE_POLL_INTERVAL_S + 10
    t += (DEVICE_POLL_INTERVAL_S + 10) * 1000
    assert await store.note_poll("a", t, DEVICE_POLL_LEEWAY_MS) is None
    # Another grant keeps its own count.
    assert await store.note_poll("b", t, DEVICE_POLL_LEEWAY_MS) is None
    assert await store.note_poll("b", t + interval_ms, DEVICE_POLL_LEEWAY_MS) is None


async def test_a_poll_of_an_unknown_grant_changes_nothing(store: OAuthStore) -> None:
    assert await store.note_poll("gone", T0, DEVICE_POLL_LEEWAY_MS) is None
    assert await store.note_poll("gone", T0, DEVICE_POLL_LEEWAY_MS) is None
