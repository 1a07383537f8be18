"""The cache behind the token, push-rule and room-context caches (homeserver.invalidation)."""

from __future__ import annotations

from homeserver.invalidation import InvalidatedCache


def test_a_fill_that_raced_an_invalidation_is_not_kept() -> None:
    cache: InvalidatedCache[str, int] = InvalidatedCache(10)
    generation = cache.generation  # a reader starts reading the database
    cache.drop(["a"])  # meanwhile the row changes and is invalidated
    cache.put("a", 1, generation)
    assert cache.get("a") is None
    cache.put("a", 2, cache.generation)
    assert cache.get("a") == 2


def test_bounded_least_recently_used_first_and_dropped_by_value() -> None:
    cache: InvalidatedCache[str, int] = InvalidatedCache(2)
    cache.put("a", 1, cache.generation)
    cache.put("b", 2, cache.generation)
    assert cache.get("a") == 1  # now the most recently used
    cache.put("c", 3, cache.generation)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    cache.drop_where(lambda v: v == 3)
    assert (len(cache), cache.get("c")) == (1, None)
    cache.clear()
    assert len(cache) == 0
