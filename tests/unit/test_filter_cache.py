"""The /sync filter cache: shared per distinct filter, scoped per user for stored IDs, bounded."""

from __future__ import annotations

import json
from typing import Any

import pytest

from homeserver.errors import MatrixError
from homeserver.sync.filter_cache import MAX_CACHED_INLINE_FILTER, NO_FILTER, FilterCache


class Stored:
    def __init__(self) -> None:
        self.filters = {("@a:hs", "0"): {"room": {"timeline": {"limit": 3}}}}
        self.reads = 0

    async def get(self, user_id: str, filter_id: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.filters.get((user_id, filter_id))


async def test_no_filter_is_the_shared_empty_one() -> None:
    assert await FilterCache(Stored()).resolve("@a:hs", None) is NO_FILTER


async def test_the_same_inline_filter_is_parsed_once_and_shared_between_users() -> None:
    cache = FilterCache(Stored())
    raw = '{"room":{"timeline":{"limit":5}}}'
    first = await cache.resolve("@a:hs", raw)
    assert first[1].timeline.limit == 5
    assert await cache.resolve("@b:hs", raw) is first


async def test_a_stored_filter_id_is_read_once_and_only_its_owner_resolves_it() -> None:
    stored = Stored()
    cache = FilterCache(stored)
    mine = await cache.resolve("@a:hs", "0")
    assert mine[1].timeline.limit == 3
    assert await cache.resolve("@a:hs", "0") is mine
    assert stored.reads == 1
    with pytest.raises(MatrixError) as err:
        await cache.resolve("@b:hs", "0")
    assert err.value.errcode == "M_INVALID_PARAM"


async def test_bad_inline_json_is_m_bad_json_and_not_cached() -> None:
    cache = FilterCache(Stored())
    for _ in range(2):
        with pytest.raises(MatrixError) as err:
            await cache.resolve("@a:hs", "{not json")
        assert err.value.errcode == "M_BAD_JSON"


async def test_long_inline_filters_are_not_kept_and_the_cache_is_bounded() -> None:
    cache = FilterCache(Stored(), max_entries=2)
    long_raw = '{"room":{"timeline":{"limit":5}},"x":"' + "y" * MAX_CACHED_INLINE_FILTER + '"}'
    assert await cache.resolve("@a:hs", long_raw) is not await cache.resolve("@a:hs", long_raw)
    for limit in range(1, 5):
        await cache.resolve("@a:hs", json.dumps({"room": {"timeline": {"limit": limit}}}))
    assert len(cache._entries) == 2
