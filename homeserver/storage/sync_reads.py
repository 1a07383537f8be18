"""Read queries of the /sync hot path, built once.

Building a SQLAlchemy statement and generating its cache key costs several times
more than running the small indexed query itself, and an incremental /sync runs a
dozen of them. Every statement here is constructed at import time with bind
parameters (expanding ones for IN lists); SQLAlchemy memoises the cache key of a
statement object, so executing one costs a compiled-cache lookup and the query.
Queries that belong together share one pooled connection.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import (
    Integer,
    bindparam,
    exists,
    func,
    literal,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.sql import Select

from homeserver import jsonutil
from homeserver.events import Event
from homeserver.storage.cs_schema import event_push_changes, presence, push_rules_stream, sticky_events
from homeserver.storage.e2ee_schema import (
    device_inbox,
    device_list_changes,
    e2e_fallback_keys,
    e2e_one_time_keys,
)
from homeserver.storage.engine import Database
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.fast_reads import FastQuery
from homeserver.storage.schema import account_data, current_state, events, receipts, room_forgotten
from homeserver.storage.unread import UnreadCounts

Membership = tuple[str, str, str, int]

# Relation types that RelationsHandler.bundle aggregates.
BUNDLED_REL_TYPES = ("m.replace", "m.thread", "m.reference", "m.annotation")

_cs = current_state.c
_ev = events.c

_MEMBERSHIPS = select(_cs.room_id, _cs.membership, _cs.event_id, _cs.stream_id).where(
    _cs.state_key == bindparam("user_id"), _cs.type == "m.room.member"
)

_ROOMS_WITH_EVENTS = (
    select(_ev.room_id)
    .distinct()
    .where(
        _ev.room_id.in_(bindparam("room_ids", expanding=True)),
        _ev.stream_id > bindparam("after"),
        _ev.stream_id <= bindparam("upto"),
        _ev.outlier.is_(False),
    )
)

_MEMBER_EVENTS_IN = (
    select(_ev.room_id)
    .where(
        _ev.room_id.in_(bindparam("room_ids", expanding=True)),
        _ev.stream_id > bindparam("after"),
        _ev.stream_id <= bindparam("upto"),
        _ev.type == "m.room.member",
        _ev.outlier.is_(False),
    )
    .limit(1)
)

_ROOM_MEMBERS = select(_cs.state_key, _cs.membership, _cs.stream_id).where(
    _cs.room_id == bindparam("room_id"),
    _cs.type == "m.room.member",
    _cs.membership.in_(("join", "invite")),
)

# The users who left or were banned: a room's heroes when no one else is joined or invited.
_GONE_MEMBERS = (
    select(_cs.state_key)
    .where(
        _cs.room_id == bindparam("room_id"),
        _cs.type == "m.room.member",
        _cs.membership.in_(("leave", "ban")),
    )
    .order_by(_cs.stream_id, _cs.state_key)
    .limit(bindparam("limit"))
)

_FORGOTTEN = select(room_forgotten.c.room_id).where(room_forgotten.c.user_id == bindparam("user_id"))

_RELATED = (
    select(_ev.relates_to)
    .distinct()
    .where(_ev.relates_to.in_(bindparam("event_ids", expanding=True)), _ev.rel_type.in_(BUNDLED_REL_TYPES))
)

_EVENT_COLS = (
    _ev.stream_id,
    _ev.event_id,
    _ev.room_id,
    _ev.json,
    _ev.unsigned_json,
    _ev.txn_id,
    _ev.device_id,
    _ev.redacted_by,
)


_STATE_WITHOUT_MEMBERS = (
    select(*_EVENT_COLS)
    .select_from(current_state.join(events, _ev.event_id == _cs.event_id))
    .where(_cs.room_id == bindparam("room_id"), _cs.type != "m.room.member")
)


_REL = events.alias("rel")
# Whether some event relates to the row's event with a bundled relation type: the sync's
# relations section then needs no query of its own for the timeline's events.
_HAS_RELATIONS = (
    exists()
    .where(_REL.c.relates_to == _ev.event_id, _REL.c.rel_type.in_(BUNDLED_REL_TYPES))
    .label("has_relations")
)


def _timeline_statement(after: bool, types: bool, not_types: bool) -> Select[Any]:
    q = select(*_EVENT_COLS, _HAS_RELATIONS).where(
        _ev.room_id == bindparam("room_id"), _ev.outlier.is_(False), _ev.stream_id <= bindparam("upto")
    )
    if after:
        q = q.where(_ev.stream_id > bindparam("after"))
    if types:
        q = q.where(_ev.type.in_(bindparam("types", expanding=True)))
    if not_types:
        q = q.where(_ev.type.not_in(bindparam("not_types", expanding=True)))
    return q.order_by(_ev.stream_id.desc()).limit(bindparam("limit", type_=Integer))


_BOTH = (False, True)
_TIMELINE = {(a, t, n): _timeline_statement(a, t, n) for a in _BOTH for t in _BOTH for n in _BOTH}


def _probe_statement() -> Any:
    """One round trip for everything per-user and per-device of an incremental sync: the
    user's memberships (as _MEMBERSHIPS, kind 'm') and the facts of UserProbe. Every row is
    (kind, name, extra, extra, value)."""
    otk = e2e_one_time_keys.c
    fb = e2e_fallback_keys.c
    ad = account_data.c
    di = device_inbox.c
    epc = event_push_changes.c
    user: Any = bindparam("user_id")
    device: Any = bindparam("device_id")
    since: Any = bindparam("since")
    upto: Any = bindparam("upto")
    empty: Any = literal_column("''")
    return union_all(
        select(literal_column("'m'"), _cs.room_id, _cs.membership, _cs.event_id, _cs.stream_id).where(
            _cs.state_key == user, _cs.type == "m.room.member"
        ),
        select(literal_column("'otk'"), otk.algorithm, empty, empty, func.count())
        .where(otk.user_id == user, otk.device_id == device)
        .group_by(otk.algorithm),
        select(literal_column("'fb'"), fb.algorithm, empty, empty, literal(0, Integer)).where(
            fb.user_id == user, fb.device_id == device, fb.used.is_(False)
        ),
        select(literal_column("'ad'"), empty, empty, empty, func.max(ad.stream_id)).where(
            ad.user_id == user, ad.stream_id > since, ad.stream_id <= upto
        ),
        select(literal_column("'inbox'"), empty, empty, empty, func.min(di.stream_id)).where(
            di.user_id == user, di.device_id == device
        ),
        select(literal_column("'rules'"), empty, empty, empty, func.max(push_rules_stream.c.stream_id)).where(
            push_rules_stream.c.user_id == user
        ),
        # As PushActionStore.rooms_changed_since: rooms whose unread counts may have changed.
        select(literal_column("'epa'"), epc.room_id, empty, empty, epc.stream_id).where(
            epc.user_id == user, epc.stream_id > since, epc.stream_id <= upto
        ),
    )


_PROBE = FastQuery(_probe_statement())

# A window with more rows than this is summarised by the per-kind queries instead.
WINDOW_ROWS = 256


def _window_statement() -> Any:
    """Every row of the streams an incremental sync's room and device-list sections read,
    in (since, upto]: events (with whether they are member events), receipts, presence and
    device-list changes. Every row is (kind, room_id, is_member); at most `cap` rows."""
    since: Any = bindparam("since")
    upto: Any = bindparam("upto")
    none: Any = literal_column("''")
    no: Any = literal(False)
    rc = receipts.c
    pr = presence.c
    dl = device_list_changes.c
    st = sticky_events.c
    return union_all(
        select(literal_column("'e'"), _ev.room_id, _ev.type == "m.room.member").where(
            _ev.stream_id > since, _ev.stream_id <= upto, _ev.outlier.is_(False)
        ),
        select(literal_column("'r'"), rc.room_id, no).where(rc.stream_id > since, rc.stream_id <= upto),
        select(literal_column("'p'"), none, no).where(pr.stream_id > since, pr.stream_id <= upto),
        select(literal_column("'d'"), none, no).where(dl.stream_id > since, dl.stream_id <= upto),
        select(literal_column("'s'"), st.room_id, no).where(st.position > since, st.position <= upto),
    ).limit(bindparam("cap", type_=Integer))


_WINDOW = FastQuery(_window_statement())


@dataclass(slots=True)
class UserProbe:
    """What changed for one user and device in (since, upto], plus the device's key counts.

    A None position means "no row": no account data changed, no to-device message is
    queued at all, no push rule was ever changed. `push_action_rooms` are the rooms with
    notifications recorded for the user in (since, upto].
    """

    one_time_keys: dict[str, int] = field(default_factory=dict)
    fallback_keys: list[str] = field(default_factory=list)
    account_data: int | None = None
    inbox_min: int | None = None
    push_rules: int | None = None
    push_action_rooms: set[str] = field(default_factory=set)


class TimelineRead(NamedTuple):
    """A sync timeline's events (newest first) and the IDs of those with bundled relations."""

    events: list[StoredEvent]
    related: frozenset[str]


@dataclass(slots=True)
class WindowSummary:
    """What landed anywhere in a stream window (since, upto]: the rooms with (non-outlier)
    events, those with member events among them, the rooms with receipts, and whether any
    presence or device list changed. The same for every user syncing that window."""

    event_rooms: set[str] = field(default_factory=set)
    member_rooms: set[str] = field(default_factory=set)
    receipt_rooms: set[str] = field(default_factory=set)
    presence: bool = False
    device_lists: bool = False
    # Rooms with sticky events (MSC4354) positioned in the window, expired ones included.
    sticky_rooms: set[str] = field(default_factory=set)


class SyncQueries:
    def __init__(self, db: Database, events: EventStore, window_rows: int = WINDOW_ROWS) -> None:
        self.db = db
        self.events = events
        self.window_rows = window_rows
        # Unread counts, kept between syncs for rooms with many (see storage.unread).
        self.unread = UnreadCounts(db)

    async def memberships_and_probe(
        self, user_id: str, device_id: str, since: int | None, upto: int
    ) -> tuple[list[Membership], UserProbe | None]:
        """The user's memberships (as EventStore.get_memberships_for_user) and, for an
        incremental sync, the UserProbe — in one statement."""
        if since is None:
            async with self.db.read() as conn:
                rows = await conn.execute(_MEMBERSHIPS, {"user_id": user_id})
                return [(r[0], r[1], r[2], int(r[3])) for r in rows], None
        memberships: list[Membership] = []
        probe = UserProbe()
        params = {"user_id": user_id, "device_id": device_id, "since": since, "upto": upto}
        async with self.db.read() as conn:
            for kind, name, extra1, extra2, value in await _PROBE.rows(conn, params):
                if kind == "m":
                    memberships.append((name, extra1, extra2, int(value)))
                elif kind == "otk":
                    probe.one_time_keys[name] = int(value)
                elif kind == "fb":
                    probe.fallback_keys.append(name)
                elif kind == "epa":
                    probe.push_action_rooms.add(name)
                elif value is not None:
                    setattr(probe, _PROBE_FIELDS[kind], int(value))
        probe.fallback_keys.sort()
        return memberships, probe

    async def window_summary(self, since: int, upto: int) -> WindowSummary | None:
        """The WindowSummary of (since, upto], or None when more than `window_rows` rows
        landed in it (the caller then asks per user, with the per-kind queries)."""
        summary = WindowSummary()
        if since >= upto:
            return summary
        params = {"since": since, "upto": upto, "cap": self.window_rows + 1}
        async with self.db.read() as conn:
            rows = await _WINDOW.rows(conn, params)
        if len(rows) > self.window_rows:
            return None
        for kind, room_id, is_member in rows:
            if kind == "e":
                summary.event_rooms.add(room_id)
                if is_member:
                    summary.member_rooms.add(room_id)
            elif kind == "r":
                summary.receipt_rooms.add(room_id)
            elif kind == "p":
                summary.presence = True
            elif kind == "s":
                summary.sticky_rooms.add(room_id)
            else:
                summary.device_lists = True
        return summary

    async def rooms_with_events_between(self, room_ids: Collection[str], after: int, upto: int) -> set[str]:
        if not room_ids:
            return set()
        params = {"room_ids": list(room_ids), "after": after, "upto": upto}
        async with self.db.read() as conn:
            return {r[0] for r in await conn.execute(_ROOMS_WITH_EVENTS, params)}

    async def member_events_between(self, room_ids: Collection[str], after: int, upto: int) -> bool:
        """Whether any m.room.member event landed in the rooms within (after, upto]."""
        if not room_ids:
            return False
        params = {"room_ids": list(room_ids), "after": after, "upto": upto}
        async with self.db.read() as conn:
            return (await conn.execute(_MEMBER_EVENTS_IN, params)).first() is not None

    async def room_events(
        self,
        room_id: str,
        *,
        after: int | None,
        upto: int,
        limit: int,
        types: Collection[str] | None,
        not_types: Collection[str] | None,
    ) -> TimelineRead:
        """EventStore.room_events(backwards=True) for the sync timeline, with which of the
        events have bundled relations."""
        params: dict[str, Any] = {"room_id": room_id, "upto": upto, "limit": limit}
        if after is not None:
            params["after"] = after
        if types:
            params["types"] = list(types)
        if not_types:
            params["not_types"] = list(not_types)
        stmt = _TIMELINE[(after is not None, bool(types), bool(not_types))]
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt, params)).all()
        related = frozenset(r.event_id for r in rows if r.has_relations)
        return TimelineRead(await self._stored(room_id, rows), related)

    async def current_state_without_members(self, room_id: str) -> dict[tuple[str, str], StoredEvent]:
        """The room's current state except m.room.member events."""
        async with self.db.read() as conn:
            rows = (await conn.execute(_STATE_WITHOUT_MEMBERS, {"room_id": room_id})).all()
        return {s.event.state_key_tuple: s for s in await self._stored(room_id, rows)}

    async def _stored(self, room_id: str, rows: Sequence[Any]) -> list[StoredEvent]:
        """Rows of _EVENT_COLS of one room as StoredEvents (as EventStore._load)."""
        if not rows:
            return []
        rv = await self.events.get_room_version(room_id)
        if rv is None:
            return []
        loads = jsonutil.loads
        return [
            StoredEvent(
                event=Event(loads(r.json), rv, r.event_id),
                stream_id=r.stream_id,
                unsigned=loads(r.unsigned_json) if r.unsigned_json else {},
                txn_id=r.txn_id,
                device_id=r.device_id,
                redacted_by=r.redacted_by,
            )
            for r in rows
        ]

    async def member_summary(self, room_id: str, first: int) -> tuple[int, int, list[str]]:
        """(joined count, invited count, the first `first` joined or invited users by stream
        ordering): the spec orders a room summary's heroes so, and so does Synapse."""
        joined = invited = 0
        ordered: list[tuple[int, str]] = []
        async with self.db.read() as conn:
            for user_id, membership, stream_id in await conn.execute(_ROOM_MEMBERS, {"room_id": room_id}):
                if membership == "join":
                    joined += 1
                else:
                    invited += 1
                ordered.append((stream_id, user_id))
        return joined, invited, [u for _, u in heapq.nsmallest(first, ordered)]

    async def gone_members(self, room_id: str, limit: int) -> list[str]:
        """The first `limit` (by stream ordering) of the users who left the room or were banned."""
        async with self.db.read() as conn:
            rows = await conn.execute(_GONE_MEMBERS, {"room_id": room_id, "limit": limit})
            return [r[0] for r in rows]

    async def forgotten_rooms(self, user_id: str) -> set[str]:
        async with self.db.read() as conn:
            return {r[0] for r in await conn.execute(_FORGOTTEN, {"user_id": user_id})}

    async def with_relations(self, event_ids: Collection[str]) -> set[str]:
        """Those of `event_ids` that some event relates to with a bundled relation type."""
        if not event_ids:
            return set()
        async with self.db.read() as conn:
            return {r[0] for r in await conn.execute(_RELATED, {"event_ids": list(event_ids)})}


_PROBE_FIELDS = {"ad": "account_data", "inbox": "inbox_min", "rules": "push_rules"}
