"""The admin API's background jobs (room deletions, history purges, user redactions): each
runs as a task and leaves a status an admin can ask for by its ID.

Statuses are kept in memory by the worker that ran the job, at most `limit` finished ones
per kind (the oldest are forgotten first; a running job's status is always kept), and are
lost on restart, as in Synapse.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Coroutine, Iterable
from typing import Any, Generic, TypeVar

from homeserver.errors import not_found

S = TypeVar("S")


def new_job_id() -> str:
    return secrets.token_urlsafe(12)


class JobTable(Generic[S]):
    def __init__(self, limit: int, missing: str) -> None:
        self.limit = limit
        self.missing = missing  # the 404's message for an unknown ID
        self._statuses: OrderedDict[str, S] = OrderedDict()
        self._running: dict[str, asyncio.Task[None]] = {}

    def start(self, job_id: str, status: S, work: Coroutine[Any, Any, None]) -> None:
        """Keep `status` under `job_id` and run `work` (which updates it) in the background."""
        self._statuses[job_id] = status
        finished = [j for j in self._statuses if j not in self._running and j != job_id]
        for old in finished[: max(0, len(self._statuses) - self.limit)]:
            del self._statuses[old]
        task = asyncio.create_task(work)
        self._running[job_id] = task
        task.add_done_callback(lambda _: self._running.pop(job_id, None))

    def get(self, job_id: str) -> S:
        status = self._statuses.get(job_id)
        if status is None:
            raise not_found(self.missing)
        return status

    def statuses(self) -> Iterable[S]:
        return self._statuses.values()

    async def wait(self) -> None:
        """Let running jobs finish (shutdown and tests)."""
        if self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)
