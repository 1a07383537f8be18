"""Received transactions: a response is stored once, and old ones are swept now and then."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from bridge.schema import federation_received_txns
from bridge.store import TXN_KEEP_MS, TXN_SWEEP_INTERVAL_MS, FederationStore
from tests.support.database import migrated_sqlite


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FederationStore]:
    async with migrated_sqlite(tmp_path / "txns.db") as db:
        yield FederationStore(db)


async def _txn_ids(store: FederationStore) -> list[str]:
    async with store.db.read() as conn:
        rows = await conn.execute(select(federation_received_txns.c.txn_id))
        return sorted(r[0] for r in rows)


async def test_the_first_response_is_kept_and_old_ones_are_swept(store: FederationStore) -> None:
    start = 10 * TXN_KEEP_MS
    await store.store_txn_response("a.example", "t1", {"pdus": {"$x": {}}}, start)
    # A retry racing its original: the first answer stands, nothing fails.
    await store.store_txn_response("a.example", "t1", {"pdus": {"$x": {"error": "late"}}}, start)
    assert await store.get_txn_response("a.example", "t1") == {"pdus": {"$x": {}}}
    # Past the keeping time, but within the sweep interval of the last sweep: still there.
    later = start + TXN_KEEP_MS + 1
    await store.store_txn_response("a.example", "t2", {"pdus": {}}, start + TXN_SWEEP_INTERVAL_MS - 1)
    assert await _txn_ids(store) == ["t1", "t2"]
    # The next sweep drops it.
    await store.store_txn_response("a.example", "t3", {"pdus": {}}, later)
    assert await _txn_ids(store) == ["t2", "t3"]
