"""Push storage: users' rules and overrides, notification records (push actions), pushers."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver import jsonutil
from homeserver.invalidation import Invalidations
from homeserver.storage.bulk import BulkInsert
from homeserver.storage.cs_schema import (
    event_push_actions,
    event_push_changes,
    push_rules,
    push_rules_overrides,
    push_rules_stream,
    pushers,
)
from homeserver.storage.engine import Database
from homeserver.storage.unread import Counts, UnreadCounts, receipt_positions

# Invalidation topic: some pusher changed (no payload; caches of pushers start afresh).
PUSHERS_TOPIC = "pushers"

_INSERT_PUSH_ACTIONS = BulkInsert(
    event_push_actions,
    (
        "user_id",
        "event_id",
        "room_id",
        "thread_id",
        "event_stream",
        "stream_id",
        "highlight",
        "actions_json",
        "ts",
    ),
)
_UPSERT_PUSH_CHANGES = BulkInsert(
    event_push_changes, ("user_id", "room_id", "stream_id"), upsert_keys=("user_id", "room_id")
)
_UPSERT_LATE_PUSH_CHANGES = BulkInsert(
    event_push_changes,
    ("user_id", "room_id", "stream_id", "late_stream_id"),
    upsert_keys=("user_id", "room_id"),
)


@dataclass(slots=True)
class UserRule:
    kind: str
    rule_id: str
    priority: int
    rule: dict[str, Any]
    enabled: bool


@dataclass(slots=True)
class Override:
    enabled: bool | None = None
    actions: list[Any] | None = None


class RuleNotFound(Exception):
    pass


class PushRuleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_rules(self, user_id: str) -> tuple[list[UserRule], dict[str, Override]]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(
                    push_rules.c.kind,
                    push_rules.c.rule_id,
                    push_rules.c.priority,
                    push_rules.c.rule_json,
                    push_rules.c.enabled,
                ).where(push_rules.c.user_id == user_id)
            )
            rules = [UserRule(k, rid, p, jsonutil.loads(j), bool(e)) for k, rid, p, j, e in rows]
            ov_rows = await conn.execute(
                select(
                    push_rules_overrides.c.rule_id,
                    push_rules_overrides.c.enabled,
                    push_rules_overrides.c.actions_json,
                ).where(push_rules_overrides.c.user_id == user_id)
            )
            overrides = {
                rid: Override(None if en is None else bool(en), jsonutil.loads(a) if a else None)
                for rid, en, a in ov_rows
            }
        return rules, overrides

    async def stream_position(self, user_id: str) -> int:
        async with self.db.read() as conn:
            value = (
                await conn.execute(
                    select(push_rules_stream.c.stream_id).where(push_rules_stream.c.user_id == user_id)
                )
            ).scalar()
        return int(value or 0)

    async def _bump(self, conn: AsyncConnection, user_id: str) -> int:
        stream_id = await self.db.next_stream_id()
        res = await conn.execute(
            update(push_rules_stream)
            .where(push_rules_stream.c.user_id == user_id)
            .values(stream_id=stream_id)
        )
        if not res.rowcount:
            await conn.execute(insert(push_rules_stream).values(user_id=user_id, stream_id=stream_id))
        return stream_id

    async def put_rule(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        rule: dict[str, Any],
        before: str | None,
        after: str | None,
    ) -> None:
        """Create or replace a user rule; `before`/`after` position it relative to another user rule."""
        async with self.db.write() as conn:
            rows = (
                await conn.execute(
                    select(push_rules.c.rule_id, push_rules.c.priority)
                    .where(push_rules.c.user_id == user_id, push_rules.c.kind == kind)
                    .order_by(push_rules.c.priority)
                )
            ).all()
            order = [r[0] for r in rows]
            exists = rule_id in order
            anchor = before or after
            if anchor is not None:
                if anchor not in order or anchor == rule_id:
                    raise RuleNotFound(anchor)
                order = [r for r in order if r != rule_id]
                pos = order.index(anchor) + (0 if before else 1)
                order.insert(pos, rule_id)
            elif not exists:
                # New rules without a position go first: the highest priority among the user's rules.
                order.insert(0, rule_id)
            if exists:
                await conn.execute(
                    update(push_rules)
                    .where(
                        push_rules.c.user_id == user_id,
                        push_rules.c.kind == kind,
                        push_rules.c.rule_id == rule_id,
                    )
                    .values(rule_json=jsonutil.dumps(rule))
                )
            else:
                await conn.execute(
                    insert(push_rules).values(
                        user_id=user_id,
                        kind=kind,
                        rule_id=rule_id,
                        priority=0,
                        rule_json=jsonutil.dumps(rule),
                        enabled=True,
                    )
                )
            old = {r[0]: r[1] for r in rows}
            for priority, rid in enumerate(order):
                if old.get(rid) != priority:
                    await conn.execute(
                        update(push_rules)
                        .where(
                            push_rules.c.user_id == user_id,
                            push_rules.c.kind == kind,
                            push_rules.c.rule_id == rid,
                        )
                        .values(priority=priority)
                    )
            await self._bump(conn, user_id)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        async with self.db.write() as conn:
            res = await conn.execute(
                delete(push_rules).where(
                    push_rules.c.user_id == user_id,
                    push_rules.c.kind == kind,
                    push_rules.c.rule_id == rule_id,
                )
            )
            if not res.rowcount:
                raise RuleNotFound(rule_id)
            await self._bump(conn, user_id)

    async def set_user_rule_field(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        *,
        enabled: bool | None = None,
        actions: list[Any] | None = None,
    ) -> None:
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(push_rules.c.rule_json).where(
                        push_rules.c.user_id == user_id,
                        push_rules.c.kind == kind,
                        push_rules.c.rule_id == rule_id,
                    )
                )
            ).first()
            if row is None:
                raise RuleNotFound(rule_id)
            values: dict[str, Any] = {}
            if enabled is not None:
                values["enabled"] = enabled
            if actions is not None:
                rule = jsonutil.loads(row[0])
                rule["actions"] = actions
                values["rule_json"] = jsonutil.dumps(rule)
            await conn.execute(
                update(push_rules)
                .where(
                    push_rules.c.user_id == user_id,
                    push_rules.c.kind == kind,
                    push_rules.c.rule_id == rule_id,
                )
                .values(**values)
            )
            await self._bump(conn, user_id)

    async def set_override(
        self, user_id: str, rule_id: str, *, enabled: bool | None = None, actions: list[Any] | None = None
    ) -> None:
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(push_rules_overrides.c.enabled, push_rules_overrides.c.actions_json).where(
                        push_rules_overrides.c.user_id == user_id, push_rules_overrides.c.rule_id == rule_id
                    )
                )
            ).first()
            new_enabled = enabled if enabled is not None else (row[0] if row else None)
            new_actions = jsonutil.dumps(actions) if actions is not None else (row[1] if row else None)
            if row is None:
                await conn.execute(
                    insert(push_rules_overrides).values(
                        user_id=user_id, rule_id=rule_id, enabled=new_enabled, actions_json=new_actions
                    )
                )
            else:
                await conn.execute(
                    update(push_rules_overrides)
                    .where(
                        push_rules_overrides.c.user_id == user_id, push_rules_overrides.c.rule_id == rule_id
                    )
                    .values(enabled=new_enabled, actions_json=new_actions)
                )
            await self._bump(conn, user_id)


class PushAction(NamedTuple):
    """One recipient's notification for one event (a tuple: thousands are made per second)."""

    user_id: str
    event_id: str
    room_id: str
    thread_id: str
    event_stream: int
    highlight: bool
    actions: list[Any]
    ts: int


@dataclass(slots=True, frozen=True)
class NotificationRow:
    stream_id: int
    event_id: str
    room_id: str
    thread_id: str
    event_stream: int
    actions: list[Any]
    ts: int


async def record_counts_changed(
    db: Database, conn: AsyncConnection, room_id: str, user_ids: Collection[str]
) -> None:
    """Inside the caller's write transaction: the users' unread counts in the room changed
    otherwise than by new actions (a history purge deleted some). Recorded as a late write,
    so that counts kept from earlier syncs are made afresh, and syncs report them."""
    if not user_ids:
        return
    stream_id = await db.next_stream_id()
    rows = [(u, room_id, stream_id, stream_id) for u in sorted(user_ids)]
    await db.insert(conn, _UPSERT_LATE_PUSH_CHANGES, rows)


class PushActionStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.counts = UnreadCounts(db)

    async def add(self, actions: list[PushAction]) -> int:
        """Record notifications for one event already committed (a "late" write: see
        homeserver.storage.unread); returns the stream position of the batch."""
        async with self.db.write() as conn:
            stream_id = await self.add_in(conn, actions, late=True)
        self.recorded([actions])
        return stream_id

    async def add_in(self, conn: AsyncConnection, actions: list[PushAction], late: bool = False) -> int:
        """Record notifications (of any number of events) inside the caller's write
        transaction, at one new stream position, which is returned. `late`: the events
        committed in an earlier transaction. The caller calls `recorded` once the
        transaction has committed."""
        stream_id = await self.db.next_stream_id()
        await self.db.insert(
            conn,
            _INSERT_PUSH_ACTIONS,
            [
                (
                    a.user_id,
                    a.event_id,
                    a.room_id,
                    a.thread_id,
                    a.event_stream,
                    stream_id,
                    a.highlight,
                    jsonutil.dumps(a.actions),
                    a.ts,
                )
                for a in actions
            ],
        )
        # Sorted: concurrent writers (other workers) take these rows' locks in one order.
        changed = sorted({(a.user_id, a.room_id) for a in actions})
        if late:
            late_rows = [(u, r, stream_id, stream_id) for u, r in changed]
            await self.db.insert(conn, _UPSERT_LATE_PUSH_CHANGES, late_rows)
        else:
            await self.db.insert(conn, _UPSERT_PUSH_CHANGES, [(u, r, stream_id) for u, r in changed])
        return stream_id

    def recorded(self, per_event: list[list[PushAction]]) -> None:
        """Committed notifications, grouped by event (a hook for push delivery)."""

    async def unread_counts(self, user_id: str, room_ids: Collection[str]) -> dict[str, dict[str, Counts]]:
        """room_id -> thread_id ("main" or a root) -> unread counts, after the user's read receipts.

        An unthreaded receipt covers every thread; a threaded one only its own thread.
        """
        return await self.counts.full(user_id, room_ids)

    async def rooms_changed_since(self, user_id: str, since: int, upto: int) -> set[str]:
        # A room whose counts changed again after `upto` shows a newer position here; the
        # next sync (from `upto`) reports it.
        changes = event_push_changes.c
        q = select(changes.room_id).where(
            changes.user_id == user_id, changes.stream_id > since, changes.stream_id <= upto
        )
        async with self.db.read() as conn:
            return {r[0] for r in await conn.execute(q)}

    async def notifications(
        self, user_id: str, before: int | None, limit: int, only_highlight: bool
    ) -> list[NotificationRow]:
        epa = event_push_actions
        q = select(
            epa.c.stream_id,
            epa.c.event_id,
            epa.c.room_id,
            epa.c.thread_id,
            epa.c.event_stream,
            epa.c.actions_json,
            epa.c.ts,
        ).where(epa.c.user_id == user_id)
        if before is not None:
            q = q.where(epa.c.event_stream < before)
        if only_highlight:
            q = q.where(epa.c.highlight.is_(True))
        q = q.order_by(epa.c.event_stream.desc()).limit(limit)
        async with self.db.read() as conn:
            return [
                NotificationRow(s, e, r, t, es, jsonutil.loads(a), ts)
                for s, e, r, t, es, a, ts in await conn.execute(q)
            ]

    async def read_positions(self, user_id: str, room_ids: Collection[str]) -> dict[tuple[str, str], int]:
        """(room_id, receipt thread_id or "") -> newest read position."""
        if not room_ids:
            return {}
        ids = list(room_ids)
        pos = receipt_positions(user_id, lambda column: column.in_(ids))
        async with self.db.read() as conn:
            return {(r, t): int(p) for r, t, p in await conn.execute(select(pos))}


@dataclass(slots=True, frozen=True)
class Pusher:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]
    device_id: str | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "app_id": self.app_id,
            "pushkey": self.pushkey,
            "kind": self.kind,
            "app_display_name": self.app_display_name,
            "device_display_name": self.device_display_name,
            "lang": self.lang,
            "data": self.data,
        }
        if self.profile_tag is not None:
            out["profile_tag"] = self.profile_tag
        return out


class PusherStore:
    def __init__(self, db: Database, invalidations: Invalidations | None = None) -> None:
        self.db = db
        # Bumped before and after every change this process makes, and when another worker
        # made one, so callers can cache what they read (and tell that a read overlapped a
        # change).
        self.version = 0
        self._peers = invalidations or Invalidations()
        self._peers.subscribe(PUSHERS_TOPIC, self._changed_elsewhere)
        self._peers.on_reset(lambda: self._changed_elsewhere(None))

    def _changed_elsewhere(self, _payload: object) -> None:
        self.version += 1

    _cols = (
        pushers.c.user_id,
        pushers.c.app_id,
        pushers.c.pushkey,
        pushers.c.kind,
        pushers.c.app_display_name,
        pushers.c.device_display_name,
        pushers.c.profile_tag,
        pushers.c.lang,
        pushers.c.data_json,
        pushers.c.device_id,
    )

    async def for_user(self, user_id: str) -> list[Pusher]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(*self._cols).where(pushers.c.user_id == user_id))
            return [Pusher(*r[:8], jsonutil.loads(r[8]), r[9]) for r in rows]

    async def for_users(self, user_ids: Collection[str]) -> list[Pusher]:
        if not user_ids:
            return []
        async with self.db.read() as conn:
            rows = await conn.execute(select(*self._cols).where(pushers.c.user_id.in_(list(user_ids))))
            return [Pusher(*r[:8], jsonutil.loads(r[8]), r[9]) for r in rows]

    async def set(self, pusher: Pusher, append: bool, now: int) -> None:
        self.version += 1
        try:
            await self._set(pusher, append, now)
        finally:
            self.version += 1
            self._peers.broadcast(PUSHERS_TOPIC, None)

    async def _set(self, pusher: Pusher, append: bool, now: int) -> None:
        async with self.db.write() as conn:
            if not append:
                # Without append, this pushkey belongs to this user only (the device changed hands).
                await conn.execute(
                    delete(pushers).where(
                        pushers.c.app_id == pusher.app_id,
                        pushers.c.pushkey == pusher.pushkey,
                        pushers.c.user_id != pusher.user_id,
                    )
                )
            await conn.execute(
                delete(pushers).where(
                    pushers.c.user_id == pusher.user_id,
                    pushers.c.app_id == pusher.app_id,
                    pushers.c.pushkey == pusher.pushkey,
                )
            )
            await conn.execute(
                insert(pushers).values(
                    user_id=pusher.user_id,
                    app_id=pusher.app_id,
                    pushkey=pusher.pushkey,
                    kind=pusher.kind,
                    app_display_name=pusher.app_display_name,
                    device_display_name=pusher.device_display_name,
                    profile_tag=pusher.profile_tag,
                    lang=pusher.lang,
                    data_json=jsonutil.dumps(pusher.data),
                    device_id=pusher.device_id,
                    created_ts=now,
                )
            )

    async def delete(self, user_id: str, app_id: str, pushkey: str) -> None:
        await self._delete(
            pushers.c.user_id == user_id, pushers.c.app_id == app_id, pushers.c.pushkey == pushkey
        )

    async def delete_for_devices(self, user_id: str, device_ids: list[str]) -> None:
        """Remove the pushers set up from these devices (they were logged out or deleted)."""
        await self._delete(pushers.c.user_id == user_id, pushers.c.device_id.in_(device_ids))

    async def _delete(self, *where: Any) -> None:
        self.version += 1
        try:
            async with self.db.write() as conn:
                await conn.execute(delete(pushers).where(*where))
        finally:
            self.version += 1
            self._peers.broadcast(PUSHERS_TOPIC, None)
