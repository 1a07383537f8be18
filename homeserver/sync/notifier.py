"""Wakes long-polling /sync requests when something they care about changes.

A waiting sync registers one future under its user ID and under each room it
is joined to; a new event in a room wakes only that room's waiters. An idle
long-poll therefore costs one future and a few set entries — no polling, no
per-connection task.

`ephemeral_serial` counts in-memory changes (typing) that have no database
stream position; it is the second half of a sync token.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


class _Held:
    """Notifications made inside a `Notifier.held` block, not yet delivered."""

    __slots__ = ("most", "open", "publish_rooms", "publish_users", "rooms", "timer", "users")

    def __init__(self, most: float) -> None:
        self.most = most
        self.open = True
        self.rooms: set[str] = set()
        self.users: set[str] = set()
        # The subsets to forward to other workers (not local_only).
        self.publish_rooms: set[str] = set()
        self.publish_users: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None


# The holding block of the current task (and of tasks it starts meanwhile), if any.
_HELD: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("sotto_held_notify", default=None)


class Notifier:
    def __init__(self) -> None:
        self._by_user: dict[str, set[asyncio.Future[bool]]] = defaultdict(set)
        self._by_room: dict[str, set[asyncio.Future[bool]]] = defaultdict(set)
        self.ephemeral_serial = 0
        self.closing = False
        # Hooks that forward notifications to other workers (Redis pub/sub), if configured.
        self.remote_publishers: list[Callable[[list[str], list[str]], None]] = []
        # Called whenever rooms have news (here or, through Redis, on another worker): for
        # background senders that read the event stream (application services).
        self.room_observers: list[Callable[[], None]] = []
        # Called when users are notified (to-device messages, key changes...), if any.
        self.user_observers: list[Callable[[], None]] = []

    @property
    def waiting(self) -> int:
        return sum(len(s) for s in self._by_user.values())

    def bump_ephemeral(self, floor: int = 0) -> int:
        """A new serial: one above the last, or `floor` if that is higher."""
        self.ephemeral_serial = max(self.ephemeral_serial + 1, floor)
        return self.ephemeral_serial

    def _wake(self, futures: Iterable[asyncio.Future[bool]]) -> None:
        for fut in list(futures):
            if not fut.done():
                fut.set_result(True)

    def notify(
        self, *, rooms: Iterable[str] = (), users: Iterable[str] = (), local_only: bool = False
    ) -> None:
        held = _HELD.get()
        if held is not None and held.open:
            self._hold(held, rooms, users, local_only)
            return
        self._deliver(list(rooms), list(users), local_only)

    @contextmanager
    def held(self, most: float) -> Iterator[None]:
        """Deliver the block's notifications together when it ends, or `most` seconds after
        the first of them if it is still running: a federation transaction's PDUs then wake
        a parked sync once, not once per PDU. Other tasks' notifications are not held."""
        held = _Held(most)
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)
            held.open = False
            self._flush(held)

    def _hold(self, held: _Held, rooms: Iterable[str], users: Iterable[str], local_only: bool) -> None:
        rooms, users = list(rooms), list(users)
        held.rooms.update(rooms)
        held.users.update(users)
        if not local_only:
            held.publish_rooms.update(rooms)
            held.publish_users.update(users)
        if held.timer is None:
            held.timer = asyncio.get_running_loop().call_later(held.most, self._flush, held)

    def _flush(self, held: _Held) -> None:
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None
        local_rooms, local_users = held.rooms - held.publish_rooms, held.users - held.publish_users
        if local_rooms or local_users:
            self._deliver(list(local_rooms), list(local_users), local_only=True)
        if held.publish_rooms or held.publish_users:
            self._deliver(list(held.publish_rooms), list(held.publish_users), local_only=False)
        held.rooms, held.users, held.publish_rooms, held.publish_users = set(), set(), set(), set()

    def _deliver(self, rooms: list[str], users: list[str], local_only: bool) -> None:
        if rooms:
            for observe in self.room_observers:
                observe()
        for room_id in rooms:
            waiters = self._by_room.get(room_id)
            if waiters:
                self._wake(waiters)
        if users:
            for observe in self.user_observers:
                observe()
        for user_id in users:
            waiters = self._by_user.get(user_id)
            if waiters:
                self._wake(waiters)
        if not local_only:
            for publish in self.remote_publishers:
                publish(rooms, users)

    def close(self) -> None:
        """Shutting down: wake every long-poll and keep new ones from waiting."""
        self.closing = True
        self.notify_all()

    def notify_all(self) -> None:
        for waiters in list(self._by_user.values()):
            self._wake(waiters)

    async def wait(self, user_id: str, room_ids: list[str], timeout: float) -> bool:
        """Wait up to `timeout` seconds for a change; True if woken. Keeps `room_ids` as given.
        Cancelling the waiting task cancels the watch, which then leaves the indexes."""
        return await self.watch(user_id, room_ids, timeout)

    def watch(self, user_id: str, room_ids: list[str], timeout: float) -> asyncio.Future[bool]:
        """A future that becomes True when woken, False after `timeout` seconds (at once if
        closing); no task needed (a detached long-poll waits on its callback). Cancel it to
        stop watching; it leaves the indexes as it completes either way. A bare future and a
        timer handle (not asyncio.wait_for, which adds a second future and a frame): this is
        what each of many thousand parked long-polls holds. Keeps `room_ids` as given."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        if self.closing:
            fut.set_result(False)
            return fut
        timer = loop.call_later(timeout, _expire, fut)
        self._by_user[user_id].add(fut)
        for room_id in room_ids:
            self._by_room[room_id].add(fut)
        fut.add_done_callback(_Unwatch(self, user_id, room_ids, timer))
        return fut

    @staticmethod
    def _discard(index: dict[str, set[asyncio.Future[bool]]], key: str, fut: asyncio.Future[bool]) -> None:
        waiters = index.get(key)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del index[key]


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class _Unwatch:
    """A watch's clean-up once its future is done (one small object, not a closure)."""

    __slots__ = ("notifier", "room_ids", "timer", "user_id")

    def __init__(
        self, notifier: Notifier, user_id: str, room_ids: list[str], timer: asyncio.TimerHandle
    ) -> None:
        self.notifier = notifier
        self.user_id = user_id
        self.room_ids = room_ids
        self.timer = timer

    def __call__(self, fut: asyncio.Future[bool]) -> None:
        self.timer.cancel()
        discard = self.notifier._discard
        discard(self.notifier._by_user, self.user_id, fut)
        for room_id in self.room_ids:
            discard(self.notifier._by_room, room_id, fut)
