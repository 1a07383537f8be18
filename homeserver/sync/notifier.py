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
from collections import defaultdict
from collections.abc import Callable, Iterable


class Notifier:
    def __init__(self) -> None:
        self._by_user: dict[str, set[asyncio.Future[bool]]] = defaultdict(set)
        self._by_room: dict[str, set[asyncio.Future[bool]]] = defaultdict(set)
        self.ephemeral_serial = 0
        self.closing = False
        # Hooks that forward notifications to other workers (Redis pub/sub), if configured.
        self.remote_publishers: list[Callable[[list[str], list[str]], None]] = []

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
        rooms = list(rooms)
        users = list(users)
        for room_id in rooms:
            waiters = self._by_room.get(room_id)
            if waiters:
                self._wake(waiters)
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
        """Wait up to `timeout` seconds for a change; True if woken. Keeps `room_ids` as given."""
        if self.closing:
            return False
        # A bare future and a timer handle (not asyncio.wait_for, which adds a second future
        # and a frame): this is what each of many thousand parked long-polls holds.
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(timeout, _expire, fut)
        self._by_user[user_id].add(fut)
        for room_id in room_ids:
            self._by_room[room_id].add(fut)
        try:
            return await fut
        finally:
            timer.cancel()
            self._discard(self._by_user, user_id, fut)
            for room_id in room_ids:
                self._discard(self._by_room, room_id, fut)

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
