"""Sliding sync's DM rooms cache on a real SQLite database: a remembered `m.direct` serves a
request only when the probe shows no account data change and the value was known at a
position the request's window covers."""

from __future__ import annotations

from pathlib import Path

from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.sync_reads import UserProbe
from homeserver.sync.sliding.rooms import known_dm_rooms
from tests.support.database import migrated_sqlite

ALICE = "@alice:test"
QUIET = UserProbe()


async def test_the_cache_serves_only_the_windows_it_is_valid_for(tmp_path: Path) -> None:
    async with migrated_sqlite(tmp_path / "db.sqlite") as db:
        store = AccountDataStore(db)
        dms = known_dm_rooms(store)
        await store.set(ALICE, None, "m.direct", {"@bob:test": ["!one:test"]})
        assert await dms.get(ALICE, None, 10, None) == {"!one:test"}
        # Changed behind the cache's back (another worker, say).
        await store.set(ALICE, None, "m.direct", {"@bob:test": ["!two:test"]})
        # A window that covers the cached position, probe quiet: the cache answers.
        assert await dms.get(ALICE, 10, 12, QUIET) == {"!one:test"}
        # The probe saw account data change: read again.
        assert await dms.get(ALICE, 12, 14, UserProbe(account_data=13)) == {"!two:test"}
        await store.set(ALICE, None, "m.direct", {"@bob:test": ["!three:test"]})
        # Known at 14: a window starting after it may miss a change in between.
        assert await dms.get(ALICE, 15, 16, QUIET) == {"!three:test"}
        await store.set(ALICE, None, "m.direct", {})
        # Known at 16: a window ending before it must not use a value read later.
        assert await dms.get(ALICE, 14, 15, QUIET) == set()
        # No probe (a first request): always read.
        await store.set(ALICE, None, "m.direct", {"@bob:test": ["!four:test"]})
        assert await dms.get(ALICE, 15, 15, None) == {"!four:test"}


async def test_the_cache_is_bounded(tmp_path: Path) -> None:
    async with migrated_sqlite(tmp_path / "db.sqlite") as db:
        dms = known_dm_rooms(AccountDataStore(db), max_users=2)
        for i in range(5):
            await dms.get(f"@u{i}:test", None, 1, None)
        assert len(dms._known) <= 2
