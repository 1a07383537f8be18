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
        self._by_user: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._by_room: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self.ephemeral_serial = 0
        self.closing = False
        # Hooks that forward notifications to other workers (Redis pub/sub), if configured.
        self.remote_publishers: list[Callable[[list[str], list[str]], None]] = []

    @property
    def waiting(self) -> int:
        return sum(len(s) for s in self._by_user.values())

    def bump_ephemeral(self) -> int:
        self.ephemeral_serial += 1
        return self.ephemeral_serial

    def _wake(self, futures: Iterable[asyncio.Future[None]]) -> None:
        for fut in list(futures):
            if not fut.done():
                fut.set_result(None)

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

    async def wait(self, user_id: str, room_ids: Iterable[str], timeout: float) -> bool:
        """Wait up to `timeout` seconds for a change; True if woken."""
        if self.closing:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        room_ids = list(room_ids)
        self._by_user[user_id].add(fut)
        for room_id in room_ids:
            self._by_room[room_id].add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._discard(self._by_user, user_id, fut)
            for room_id in room_ids:
                self._discard(self._by_room, room_id, fut)

    @staticmethod
    def _discard(index: dict[str, set[asyncio.Future[None]]], key: str, fut: asyncio.Future[None]) -> None:
        waiters = index.get(key)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del index[key]
