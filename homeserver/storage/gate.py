"""A fair gate in front of the PostgreSQL connection pool (see `ConnectionGate`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque

# Whether the current task (a request, or a background job) has used a pooled connection before.
SEEN_POOL: contextvars.ContextVar[bool] = contextvars.ContextVar("sotto_seen_pool", default=False)


class ConnectionGate:
    """Admits at most `size` concurrent checkouts of the PostgreSQL pool, in a fair order.

    SQLAlchemy's async pool lets a newcomer take a connection that was just returned while a
    woken waiter goes to the back of the queue, so under a burst of thousands of requests a
    few waited past the pool timeout and failed with 500. Here a released slot is handed
    directly to the oldest waiter, and a task that has already used a connection (a request
    half-way through its queries, or a writer holding the write lock) goes before tasks that
    have not started: requests in progress finish instead of all of them crawling together,
    and new ones wait their turn. Waiting has no time limit (the client's timeout bounds it).
    """

    __slots__ = ("_free", "_fresh", "_resumed", "_resumed_timeout")

    def __init__(self, size: int, resumed_timeout: float) -> None:
        # A task already holding connections waits at most this long (it should never have
        # to: only a bug lets more checkouts through than the gate admits).
        self._resumed_timeout = resumed_timeout
        self._free = size
        self._resumed: deque[asyncio.Future[None]] = deque()
        self._fresh: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._resumed) + len(self._fresh)

    async def acquire(self, priority: bool = False) -> None:
        resumed = priority or SEEN_POOL.get()
        if not resumed:
            SEEN_POOL.set(True)
        if self._free > 0 and not self._resumed and (resumed or not self._fresh):
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._resumed if resumed else self._fresh
        queue.append(waiter)
        try:
            if resumed:
                async with asyncio.timeout(self._resumed_timeout):
                    await waiter
            else:
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def release(self) -> None:
        for queue in (self._resumed, self._fresh):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1
