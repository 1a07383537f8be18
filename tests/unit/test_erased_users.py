"""Erased users kept in memory: read once, forgotten by every worker when one of them erases
or reactivates someone (the invalidation hub, over an in-memory transport as the Redis
bridge delivers it), and asked per batch once the table is too big to hold."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event

from homeserver.invalidation import Invalidations
from homeserver.storage.accounts import AccountStore
from homeserver.storage.erased_users import ErasedUsers
from tests.support.database import migrated_sqlite
from tests.unit.test_ratelimit_overrides import Bus

ERIN = "@erin:example.org"
FRANK = "@frank:example.org"


async def test_nobody_erased_is_known_after_one_read(tmp_path: Path) -> None:
    async with migrated_sqlite(tmp_path / "db.sqlite") as db:
        erased = ErasedUsers(db)
        assert not erased.nobody  # not read yet
        assert await erased.among({ERIN, "@remote:elsewhere.org"}) == set()
        assert erased.nobody


async def test_an_erasure_on_one_worker_reaches_the_other(tmp_path: Path) -> None:
    async with migrated_sqlite(tmp_path / "db.sqlite") as db:
        bus = Bus()
        hubs = [Invalidations(), Invalidations()]
        workers = [AccountStore(db, hub) for hub in hubs]
        for i, hub in enumerate(hubs):
            hub.attach(bus.transport(i))
        await workers[0].create_user(ERIN, None, 0)
        assert await workers[1].erased.among({ERIN, FRANK}) == set()
        assert workers[1].erased.nobody  # held, and empty

        await workers[0].erase(ERIN)
        assert not workers[1].erased.nobody
        assert await workers[1].erased.among({ERIN, FRANK}) == {ERIN}
        assert await workers[0].erased.is_erased(ERIN)

        await workers[0].reactivate(ERIN, "hash")
        assert await workers[1].erased.among({ERIN, FRANK}) == set()
        assert workers[1].erased.nobody


async def test_past_the_cap_each_batch_asks(tmp_path: Path) -> None:
    async with migrated_sqlite(tmp_path / "db.sqlite") as db:
        accounts = AccountStore(db)
        users = [f"@u{i}:example.org" for i in range(3)]
        for user_id in users:
            await accounts.create_user(user_id, None, 0)
            await accounts.erase(user_id)
        accounts.erased.max_held = 2
        assert await accounts.erased.among({users[0], FRANK}) == {users[0]}
        assert accounts.erased._held is None  # not held: asked
        await accounts.reactivate(users[0], "hash")
        assert await accounts.erased.among(set(users)) == set(users[1:])
        # Back under the cap: held again.
        await accounts.reactivate(users[1], "hash")
        assert await accounts.erased.among(set(users)) == {users[2]}
        assert accounts.erased._held == frozenset({users[2]})


async def test_requests_needing_the_table_at_once_share_one_read(tmp_path: Path) -> None:
    async with migrated_sqlite(tmp_path / "db.sqlite") as db:
        accounts = AccountStore(db)
        await accounts.create_user(ERIN, None, 0)
        await accounts.erase(ERIN)
        reads: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if "erased_users" in statement:
                reads.append(statement)

        event.listen(db.engine.sync_engine, "before_cursor_execute", count)
        try:
            # Every parked sync a change wakes asks at once.
            found = await asyncio.gather(*(accounts.erased.among({ERIN, FRANK}) for _ in range(20)))
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", count)
        assert found == [{ERIN}] * 20
        assert len(reads) == 1
