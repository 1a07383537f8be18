"""Delayed events (MSC4140) still scheduled: one row each until it is sent or cancelled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update

from homeserver import jsonutil
from homeserver.storage.cs_schema import delayed_events
from homeserver.storage.engine import Database

_t = delayed_events.c


@dataclass(slots=True, frozen=True)
class DelayedEvent:
    delay_id: str
    user_id: str
    device_id: str | None
    room_id: str
    type: str
    state_key: str | None
    content: dict[str, Any]
    delay_ms: int
    running_since: int
    # Sent as a sticky event (MSC4354) for this long.
    sticky_duration_ms: int | None = None

    @property
    def send_ts(self) -> int:
        return self.running_since + self.delay_ms

    def to_json(self) -> dict[str, Any]:
        """As the unstable API shows it (the field names Synapse and matrix-js-sdk use)."""
        out: dict[str, Any] = {
            "delay_id": self.delay_id,
            "room_id": self.room_id,
            "type": self.type,
            "delay": self.delay_ms,
            "running_since": self.running_since,
            "content": self.content,
        }
        if self.state_key is not None:
            out["state_key"] = self.state_key
        return out


_COLUMNS = (
    _t.delay_id,
    _t.user_id,
    _t.device_id,
    _t.room_id,
    _t.type,
    _t.state_key,
    _t.content_json,
    _t.delay_ms,
    _t.running_since,
    _t.sticky_duration_ms,
)


def _row(r: Any) -> DelayedEvent:
    sticky = None if r[9] is None else int(r[9])
    return DelayedEvent(
        r[0], r[1], r[2], r[3], r[4], r[5], jsonutil.loads(r[6]), int(r[7]), int(r[8]), sticky
    )


class DelayedEventStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, event: DelayedEvent, txn_id: str | None, max_per_user: int) -> int | None:
        """Schedule the event; None if done, else (the user has `max_per_user` already) the
        send time of their next one."""
        async with self.db.write() as conn:
            count, first = (
                await conn.execute(
                    select(func.count(), func.min(_t.send_ts)).where(_t.user_id == event.user_id)
                )
            ).one()
            if int(count) >= max_per_user:
                return int(first)
            await conn.execute(
                delayed_events.insert().values(
                    delay_id=event.delay_id,
                    user_id=event.user_id,
                    device_id=event.device_id,
                    txn_id=txn_id,
                    room_id=event.room_id,
                    type=event.type,
                    state_key=event.state_key,
                    content_json=jsonutil.dumps(event.content),
                    delay_ms=event.delay_ms,
                    running_since=event.running_since,
                    send_ts=event.send_ts,
                    sticky_duration_ms=event.sticky_duration_ms,
                )
            )
        return None

    async def for_txn(self, user_id: str, device_id: str | None, txn_id: str) -> str | None:
        q = select(_t.delay_id).where(_t.user_id == user_id, _t.txn_id == txn_id)
        q = q.where(_t.device_id.is_(None) if device_id is None else _t.device_id == device_id)
        async with self.db.read() as conn:
            found = (await conn.execute(q)).scalar_one_or_none()
        return str(found) if found is not None else None

    async def get(self, delay_id: str) -> DelayedEvent | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(_t.delay_id == delay_id))).first()
        return _row(row) if row is not None else None

    async def of_user(self, user_id: str) -> list[DelayedEvent]:
        q = select(*_COLUMNS).where(_t.user_id == user_id).order_by(_t.send_ts, _t.delay_id)
        async with self.db.read() as conn:
            return [_row(r) for r in await conn.execute(q)]

    async def take(self, delay_id: str) -> DelayedEvent | None:
        """Remove the event from the schedule and return it (None: another worker, or the
        timer, took it first, or it never was)."""
        async with self.db.write() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(_t.delay_id == delay_id))).first()
            if row is None:
                return None
            done = await conn.execute(delete(delayed_events).where(_t.delay_id == delay_id))
        return _row(row) if done.rowcount else None

    async def restart(self, delay_id: str, now: int) -> bool:
        async with self.db.write() as conn:
            done = await conn.execute(
                update(delayed_events)
                .where(_t.delay_id == delay_id)
                .values(running_since=now, send_ts=now + _t.delay_ms)
            )
        return bool(done.rowcount)

    async def due(self, now: int, limit: int = 100) -> list[str]:
        q = select(_t.delay_id).where(_t.send_ts <= now).order_by(_t.send_ts).limit(limit)
        async with self.db.read() as conn:
            return [str(r[0]) for r in await conn.execute(q)]

    async def next_send_ts(self) -> int | None:
        async with self.db.read() as conn:
            found = (await conn.execute(select(func.min(_t.send_ts)))).scalar_one_or_none()
        return int(found) if found is not None else None

    async def others_at(self, room_id: str, event_type: str, state_key: str, user_id: str) -> list[str]:
        """Delayed state events of users other than `user_id` at this state key."""
        q = select(_t.delay_id).where(
            _t.room_id == room_id, _t.type == event_type, _t.state_key == state_key, _t.user_id != user_id
        )
        async with self.db.read() as conn:
            return [str(r[0]) for r in await conn.execute(q)]
