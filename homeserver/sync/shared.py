"""State one /sync computation shares with its extensions, and reads shared between syncs.

`ReadMemo` keeps the results of room-level reads (a room's timeline between two stream
positions, its member counts, which events have relations ...) for the newest stream
position `upto` only. A sync reads everything up to `upto`, so every sync computed at the
same `upto` may share them: when one message wakes a thousand long-polls in a room, the
room's part of the work is done once instead of a thousand times. A read that is already
running is awaited rather than repeated. Entries for an older `upto` are dropped as soon as
a newer one is seen, so the memo holds one stream window's worth at most (and never more
than `max_entries`).

`SYNC_CONTEXT` carries what the core SyncHandler already loaded for the current request
(the user's memberships, the per-user UserProbe, the WindowSummary of its stream window,
the parsed filter and `set_presence`)
to the extensions, so they neither repeat
those queries nor run the ones the probe shows would find nothing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from homeserver.storage.sync_reads import Membership, SyncQueries, UserProbe, WindowSummary
from homeserver.sync.filter import SyncFilter

T = TypeVar("T")

MAX_MEMO_ENTRIES = 1024


class _Failed(Exception):
    """The read a waiter was sharing failed or was cancelled: the waiter runs it itself."""


class ReadMemo:
    def __init__(self, max_entries: int = MAX_MEMO_ENTRIES) -> None:
        self.max_entries = max_entries
        self._upto = -1
        self._entries: OrderedDict[Hashable, asyncio.Future[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, upto: int, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        """factory()'s result, shared with every other caller asking for `key` at `upto`."""
        if upto < self._upto:
            # A sync that started before the newest position: not worth keeping.
            return await factory()
        if upto > self._upto:
            self._upto = upto
            self._entries.clear()
        full_key = (upto, key)
        while (fut := self._entries.get(full_key)) is not None:
            try:
                result: T = await asyncio.shield(fut)
                return result
            except _Failed:
                continue
        fut = asyncio.get_running_loop().create_future()
        self._entries[full_key] = fut
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        try:
            value = await factory()
        except BaseException:
            if self._entries.get(full_key) is fut:
                del self._entries[full_key]
            fut.set_exception(_Failed())
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        fut.set_result(value)
        return value


@dataclass(slots=True)
class SyncContext:
    reads: SyncQueries
    memo: ReadMemo
    since: int | None
    upto: int
    memberships: list[Membership]
    # Only for incremental syncs.
    probe: UserProbe | None
    # The request's filter as JSON (shared: read-only) and its `set_presence`.
    filter_json: dict[str, Any]
    filter: SyncFilter
    set_presence: str | None
    # What landed anywhere in (since, upto], when that was few enough rows to list; None
    # for initial syncs and long windows (then each section asks with its own query).
    window: WindowSummary | None = None
    # Timeline events whose bundled relations the timeline reads already looked up, and
    # those of them that have some.
    relations_known: set[str] = field(default_factory=set)
    related: set[str] = field(default_factory=set)


SYNC_CONTEXT: ContextVar[SyncContext | None] = ContextVar("sotto_sync_context", default=None)


def device_lists_may_have_changed(
    memberships: list[Membership], window: WindowSummary | None, since: int, upto: int, joined: list[str]
) -> bool | None:
    """Whether a user's device-list changes in (since, upto] may be non-empty, as far as
    their memberships and the window's summary tell: they are empty when no device list
    changed, the user's own memberships did not change and no member event landed in
    their rooms. None when there is no summary (the window was long): then ask."""
    if since >= upto:
        return False
    if any(since < stream <= upto for _, _, _, stream in memberships):
        return True
    if window is None:
        return None
    return window.device_lists or not window.member_rooms.isdisjoint(joined)
