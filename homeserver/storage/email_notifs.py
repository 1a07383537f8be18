"""Email notifications' bookkeeping (`email_notif_state`): per user with an email pusher, the
push-action stream position emailed about so far, and when the last email went out.

Push actions are found through `event_push_changes` (one row per user and room, at the
newest action's position) and then the (user, room, event_stream) key of
`event_push_actions`, so every query here is an index range.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import and_, exists, func, literal, select, update
from sqlalchemy.exc import IntegrityError

from homeserver.storage.cs_schema import email_notif_state, event_push_actions, event_push_changes, pushers
from homeserver.storage.engine import Database
from homeserver.storage.unread import receipt_positions

EMAIL_KIND = "email"


@dataclass(slots=True, frozen=True)
class EmailState:
    user_id: str
    last_stream_id: int
    last_sent_ts: int


@dataclass(slots=True, frozen=True)
class PendingNotification:
    event_id: str
    room_id: str
    thread_id: str
    event_stream: int
    stream_id: int
    ts: int


class EmailNotifStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def start_now(self, user_id: str) -> None:
        """An email pusher was set: the user's notifications so far are not to be emailed
        (as Synapse starts a new pusher at the newest stream position). Keeps the
        throttle's last sending time."""
        position = await self.db.refresh_stream_position()
        s = email_notif_state.c
        for _ in range(2):
            try:
                async with self.db.write() as conn:
                    q = select(s.last_stream_id).where(s.user_id == user_id)
                    current = (await conn.execute(q)).scalar_one_or_none()
                    if current is None:
                        await conn.execute(
                            email_notif_state.insert().values(
                                user_id=user_id, last_stream_id=position, last_sent_ts=0
                            )
                        )
                    elif current < position:
                        await conn.execute(
                            update(email_notif_state)
                            .where(s.user_id == user_id)
                            .values(last_stream_id=position)
                        )
                return
            except IntegrityError:
                continue  # another worker inserted the row meanwhile: update it instead

    async def users_with_news(self, after: str, sent_before: int, limit: int) -> list[EmailState]:
        """Users (by user ID, after `after`) with an email pusher, push actions newer than
        their position and no email since `sent_before` (the throttle)."""
        s, p, c = email_notif_state.c, pushers.c, event_push_changes.c
        has_pusher = exists().where(p.user_id == s.user_id, p.kind == EMAIL_KIND)
        has_news = exists().where(c.user_id == s.user_id, c.stream_id > s.last_stream_id)
        q = (
            select(s.user_id, s.last_stream_id, s.last_sent_ts)
            .where(s.user_id > after, s.last_sent_ts <= sent_before, has_pusher, has_news)
            .order_by(s.user_id)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [EmailState(u, int(last), int(sent)) for u, last, sent in await conn.execute(q)]

    async def oldest_pending_ts(
        self, user_id: str, rooms: Collection[str], after: int, upto: int
    ) -> int | None:
        """When the oldest of the user's unread notifications in `rooms` whose actions were
        recorded in (`after`, `upto`] arrived (the unread rules of `pending`, in every room
        with news, without its bounds); None if there is none. One statement: per room with
        news, a range scan from its read receipt (as an unread count)."""
        if not rooms:
            return None
        c, epa = event_push_changes.c, event_push_actions.c
        changed = select(c.room_id).where(c.user_id == user_id, c.stream_id > after)
        pos = receipt_positions(user_id, lambda column: column.in_(changed))
        main, thread = pos.alias("main_read"), pos.alias("thread_read")
        joined = event_push_actions.outerjoin(
            main, and_(main.c.room_id == epa.room_id, main.c.thread_id == literal(""))
        ).outerjoin(thread, and_(thread.c.room_id == epa.room_id, thread.c.thread_id == epa.thread_id))
        q = (
            select(epa.room_id, func.min(epa.ts))
            .select_from(joined)
            .where(
                epa.user_id == user_id,
                epa.room_id.in_(changed),
                # The unthreaded receipt covers every thread; a threaded one its own.
                epa.event_stream > func.coalesce(main.c.pos, 0),
                epa.event_stream > func.coalesce(thread.c.pos, 0),
                epa.stream_id > after,
                epa.stream_id <= upto,
            )
            .group_by(epa.room_id)
        )
        async with self.db.read() as conn:
            # Rooms left since are skipped here, as in `pending`.
            oldest = [int(ts) for room_id, ts in await conn.execute(q) if room_id in rooms]
        return min(oldest, default=None)

    async def pending(
        self, user_id: str, rooms: Collection[str], after: int, upto: int, max_rooms: int, limit: int
    ) -> list[PendingNotification]:
        """The user's unread notifications in `rooms` (those past the read receipts) whose
        actions were recorded in (`after`, `upto`], newest first: at most `limit`, from the
        `max_rooms` rooms with the newest actions."""
        if not rooms:
            return []
        c, epa = event_push_changes.c, event_push_actions.c
        # Rooms left since are skipped here rather than listed in the query (a user may be
        # in thousands of rooms).
        changed = (
            select(c.room_id)
            .where(c.user_id == user_id, c.stream_id > after)
            .order_by(c.stream_id.desc())
            .limit(max_rooms * 4)
        )
        out: list[PendingNotification] = []
        async with self.db.read() as conn:
            room_ids = [str(r) for r in (await conn.execute(changed)).scalars() if r in rooms][:max_rooms]
            if not room_ids:
                return []
            pos = receipt_positions(user_id, lambda column: column.in_(room_ids))
            read = {(str(r), str(t)): int(p) for r, t, p in await conn.execute(select(pos))}
            for room_id in room_ids:
                q = (
                    select(epa.event_id, epa.thread_id, epa.event_stream, epa.stream_id, epa.ts)
                    .where(
                        and_(
                            epa.user_id == user_id,
                            epa.room_id == room_id,
                            epa.event_stream > read.get((room_id, ""), 0),
                            epa.stream_id > after,
                            epa.stream_id <= upto,
                        )
                    )
                    .order_by(epa.event_stream.desc())
                    .limit(limit)
                )
                for event_id, thread_id, event_stream, stream_id, ts in await conn.execute(q):
                    # A threaded receipt covers its own thread only.
                    if event_stream <= read.get((room_id, thread_id), 0):
                        continue
                    out.append(
                        PendingNotification(
                            event_id, room_id, thread_id, int(event_stream), int(stream_id), int(ts)
                        )
                    )
        out.sort(key=lambda n: n.event_stream, reverse=True)
        return out[:limit]

    async def advance(self, user_id: str, expected: int, position: int, sent_ts: int | None) -> bool:
        """Move the user's position from `expected` to `position` (and, when an email was
        sent, its time); False if another pass moved it first."""
        s = email_notif_state.c
        values: dict[str, int] = {"last_stream_id": position}
        if sent_ts is not None:
            values["last_sent_ts"] = sent_ts
        async with self.db.write() as conn:
            result = await conn.execute(
                update(email_notif_state)
                .where(s.user_id == user_id, s.last_stream_id == expected)
                .values(**values)
            )
        return bool(result.rowcount)
