"""The /sync `filter` parameter, resolved once per distinct filter and shared.

Clients send the same filter on every /sync (a stored filter ID, or the same inline JSON),
so the parsed result is kept: a parked long-poll then holds a reference to a shared
filter rather than its own parsed copy, and no request parses it again. Stored filters
never change, so the cache needs no invalidation; inline filters are keyed by their text
and shared between users.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from homeserver import jsonutil
from homeserver.errors import Codes, MatrixError
from homeserver.sync.filter import SyncFilter

MAX_CACHED_FILTERS = 10_000
# Longer inline (JSON) filters are parsed on every request rather than cached.
MAX_CACHED_INLINE_FILTER = 2048

ResolvedFilter = tuple[dict[str, Any], SyncFilter]
NO_FILTER: ResolvedFilter = ({}, SyncFilter.parse({}))


class StoredFilters(Protocol):
    async def get(self, user_id: str, filter_id: str) -> dict[str, Any] | None: ...


class FilterCache:
    def __init__(self, stored: StoredFilters, max_entries: int = MAX_CACHED_FILTERS) -> None:
        self.stored = stored
        self.max_entries = max_entries
        # (user_id, filter ID) or ("", inline JSON) -> (filter JSON (read-only), parsed).
        self._entries: OrderedDict[tuple[str, str], ResolvedFilter] = OrderedDict()

    async def resolve(self, user_id: str, raw: str | None) -> ResolvedFilter:
        """The filter as JSON (shared: never mutate it) and parsed; M_BAD_JSON or
        M_INVALID_PARAM (unknown filter ID) as the spec's /sync answers."""
        if not raw:
            return NO_FILTER
        inline = raw.lstrip().startswith("{")
        key = ("", raw) if inline else (user_id, raw)
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            return cached
        filter_json: Any
        if inline:
            try:
                filter_json = jsonutil.loads(raw)
            except ValueError:
                raise MatrixError(400, Codes.BAD_JSON, "filter is not valid JSON") from None
            if not isinstance(filter_json, dict):
                filter_json = {}
        else:
            filter_json = await self.stored.get(user_id, raw)
            if filter_json is None:
                raise MatrixError(400, Codes.INVALID_PARAM, "Unknown filter")
        resolved = (filter_json, SyncFilter.parse(filter_json))
        if inline and len(raw) > MAX_CACHED_INLINE_FILTER:
            return resolved
        self._entries[key] = resolved
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return resolved
