"""Sliding sync's room list: the rooms a user may see, newest activity first, and the
lists' filters over it.

A room is in the list when the user is joined, invited or has knocked; when they were
kicked or banned (they may not have seen it happen); and when they left it themselves
after the connection was sent the room (so the client learns of the leave).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.engine import Database
from homeserver.storage.events import EventStore
from homeserver.storage.sliding_reads import latest_bumps
from homeserver.storage.sync_reads import Membership, SyncQueries, UserProbe, WindowSummary
from homeserver.sync.shared import ReadMemo
from homeserver.sync.sliding.config import ListFilters

T = TypeVar("T")

# Rooms whose bump stamp is remembered between requests.
MAX_CACHED_BUMPS = 200_000
# Users whose account data values (KnownAccountData) are remembered between requests.
MAX_CACHED_USERS = 100_000


@dataclass(slots=True)
class Entry:
    room_id: str
    membership: str
    # The user's membership event and its stream position.
    event_id: str
    stream: int
    # The sort key and `bump_stamp`: the latest bump event's position for a joined room,
    # the membership's for any other.
    bump: int


class RoomList:
    def __init__(
        self,
        db: Database,
        events: EventStore,
        account_data: AccountDataStore,
        reads: SyncQueries,
        memo: ReadMemo,
    ) -> None:
        self.db = db
        self.events = events
        self.account_data = account_data
        self.reads = reads
        self.memo = memo
        # room_id -> (latest bump position, the stream position it is known up to).
        self._bumps: dict[str, tuple[int, int]] = {}
        # Joined rooms' state the filters look at (create, encryption, name), by room, kept
        # while no event lands in the room (dropped with its bump stamp's refresh).
        self._flags: dict[str, dict[tuple[str, str], Mapping[str, Any] | None]] = {}

    async def entries(
        self, user_id: str, every: list[Membership], sent_before: Collection[str], upto: int
    ) -> list[Entry]:
        """The user's rooms from their memberships (SyncQueries.memberships_and_probe), newest
        first (ties by room ID)."""
        memberships = [m for m in every if m[3] <= upto]
        gone = [m for m in memberships if m[1] in ("leave", "ban")]
        senders: dict[str, str] = {}
        if gone:
            found = await self.events.get_events([m[2] for m in gone])
            senders = {eid: s.event.sender for eid, s in found.items()}
        keep = []
        for room_id, membership, event_id, stream in memberships:
            if membership in ("leave", "ban"):
                self_left = senders.get(event_id) == user_id
                if self_left and room_id not in sent_before:
                    continue
            keep.append((room_id, membership, event_id, stream))
        joined = [m[0] for m in keep if m[1] == "join"]
        bumps = await self._latest_bumps(joined, upto)
        out = [Entry(r, m, e, s, bumps.get(r, s) if m == "join" else s) for r, m, e, s in keep]
        out.sort(key=lambda e: (-e.bump, e.room_id))
        return out

    async def _latest_bumps(self, room_ids: list[str], upto: int) -> dict[str, int]:
        """Bump stamps, read again only for the rooms with events since they were read."""
        stale = [r for r in room_ids if r not in self._bumps or self._bumps[r][1] < upto]
        if stale:
            known = [r for r in stale if r in self._bumps]
            since = min((self._bumps[r][1] for r in known), default=0)
            changed = set(stale) - set(known)
            if known:
                changed |= await self.rooms_with_events(known, since, upto)
            fresh = await latest_bumps(self.db, changed, upto)
            if len(self._bumps) > MAX_CACHED_BUMPS:
                self._bumps.clear()
                self._flags.clear()
            for r in stale:
                if r in changed:
                    self._bumps[r] = (fresh.get(r, 0), upto)
                    self._flags.pop(r, None)
                else:
                    self._bumps[r] = (self._bumps[r][0], upto)
        return {r: self._bumps[r][0] for r in room_ids if self._bumps.get(r, (0, 0))[0]}

    async def window(self, since: int, upto: int) -> WindowSummary | None:
        """What landed anywhere in (since, upto], shared by every sync of the same window
        (/sync v3's too); None when the window is large."""
        if since >= upto:
            return WindowSummary()
        return await self.memo.get(upto, ("window", since), lambda: self.reads.window_summary(since, upto))

    async def rooms_with_events(self, room_ids: Collection[str], since: int, upto: int) -> set[str]:
        """Which of the rooms had events in (since, upto]: from the window's summary,
        unless the window is large."""
        if since >= upto or not room_ids:
            return set()
        window = await self.window(since, upto)
        if window is not None:
            return window.event_rooms.intersection(room_ids)
        return await self.reads.rooms_with_events_between(room_ids, since, upto)

    async def apply(
        self, entries: list[Entry], filters: ListFilters, user_id: str, dm_rooms: Collection[str]
    ) -> list[Entry]:
        """The entries a list's filters let through, in order."""
        out = entries
        if filters.is_invite is not None:
            out = [e for e in out if (e.membership == "invite") == filters.is_invite]
        if filters.is_dm is not None:
            out = [e for e in out if (e.room_id in dm_rooms) == filters.is_dm]
        if filters.is_encrypted is not None:
            flags = await self._state_flags(out, ("m.room.encryption", ""))
            out = [e for e in out if (e.room_id in flags) == filters.is_encrypted]
        if filters.room_types is not None or filters.not_room_types:
            creates = await self._state_flags(out, ("m.room.create", ""))
            out = [e for e in out if _type_allowed(creates.get(e.room_id), filters)]
        if filters.tags or filters.not_tags:
            tags = await self._tags(user_id, [e.room_id for e in out])
            out = [e for e in out if _tags_allowed(tags.get(e.room_id, {}), filters)]
        if filters.spaces:
            children = await self._space_children(filters.spaces, user_id)
            out = [e for e in out if e.room_id in children]
        if filters.room_name_like:
            needle = filters.room_name_like.casefold()
            names = await self._state_flags(out, ("m.room.name", ""))
            out = [e for e in out if needle in str(names.get(e.room_id, {}).get("name", "")).casefold()]
        return out

    async def _state_flags(self, entries: list[Entry], key: tuple[str, str]) -> dict[str, Mapping[str, Any]]:
        """The content of one current state event, for the rooms that have it."""
        out: dict[str, Mapping[str, Any]] = {}
        for e in entries:
            cached = self._flags.get(e.room_id, {})
            if key in cached:
                content = cached[key]
            else:
                state = await self.events.get_current_state(e.room_id, [key])
                content = state[key].event.content if key in state else None
                if e.membership == "join":
                    # Only joined rooms: `entries` drops these when an event lands in the room.
                    self._flags.setdefault(e.room_id, {})[key] = content
            if content is not None:
                out[e.room_id] = content
        return out

    async def _tags(self, user_id: str, room_ids: list[str]) -> dict[str, Mapping[str, Any]]:
        """The rooms' `m.tag` tags, read in one statement for all of the user's rooms."""
        wanted = set(room_ids)
        out: dict[str, Mapping[str, Any]] = {}
        for room_id, content in (await self.account_data.of_type_by_room(user_id, "m.tag")).items():
            tags = content.get("tags")
            if room_id in wanted and isinstance(tags, dict):
                out[room_id] = tags
        return out

    async def _space_children(self, spaces: Collection[str], user_id: str) -> set[str]:
        """Rooms named by an `m.space.child` event of the listed spaces the user is in."""
        children: set[str] = set()
        for space in spaces:
            membership = await self.events.get_membership(space, user_id)
            if membership is None or membership[0] != "join":
                continue
            state = await self.events.get_current_state(space, types=["m.space.child"])
            children |= {k[1] for k, s in state.items() if s.event.content.get("via")}
        return children


def _type_allowed(create: Mapping[str, Any] | None, filters: ListFilters) -> bool:
    room_type = create.get("type") if create else None
    if not isinstance(room_type, str):
        room_type = None
    if room_type in filters.not_room_types:
        return False
    return filters.room_types is None or room_type in filters.room_types


def _tags_allowed(tags: Mapping[str, Any], filters: ListFilters) -> bool:
    if any(t in tags for t in filters.not_tags):
        return False
    return not filters.tags or any(t in tags for t in filters.tags)


def dm_rooms_of(direct: Mapping[str, Any] | None) -> set[str]:
    """The room IDs of an `m.direct` account data object."""
    rooms: set[str] = set()
    for value in (direct or {}).values():
        if isinstance(value, list):
            rooms.update(r for r in value if isinstance(r, str))
    return rooms


class KnownAccountData(Generic[T]):
    """One type of each user's global account data, as a value derived from it, read again
    only when the user's account data changed since the value was known.

    A value is known as of a stream position; it serves a request whose probe (the user's
    changes in (since, upto]) shows no account data change, provided that position lies in
    [since, upto]: an older one may miss a change before `since`, a newer one (from a
    request that read later) may show a change the request must not see yet.
    """

    def __init__(
        self,
        account_data: AccountDataStore,
        type: str,
        derive: Callable[[Mapping[str, Any] | None], T],
        max_users: int = MAX_CACHED_USERS,
    ) -> None:
        self.account_data = account_data
        self.type = type
        self.derive = derive
        self.max_users = max_users
        self._known: dict[str, tuple[int, T]] = {}

    async def get(self, user_id: str, since: int | None, upto: int, probe: UserProbe | None) -> T:
        known = self._known.get(user_id)
        if known is not None and since is not None and probe is not None and probe.account_data is None:
            if since <= known[0] <= upto:
                self._known[user_id] = (upto, known[1])
                return known[1]
        value = self.derive(await self.account_data.get(user_id, None, self.type))
        if len(self._known) >= self.max_users:
            self._known.clear()
        self._known[user_id] = (upto, value)
        return value


def known_dm_rooms(
    account_data: AccountDataStore, max_users: int = MAX_CACHED_USERS
) -> KnownAccountData[set[str]]:
    """The rooms of each user's `m.direct` (the `is_dm` filter and flag)."""
    return KnownAccountData(account_data, "m.direct", dm_rooms_of, max_users)
