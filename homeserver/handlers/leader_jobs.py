"""Background work that one worker at a time does: the elected leader of a name
(`Database.leader`; on SQLite, or with one process, that is always this process).

`LeaderService` starts the election and a task (`_run`) and stops both; `PeriodicJob` is
the common case, `run_once` every `interval_s` while this worker leads, first after
`first_delay_s` (the server is busy starting).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from typing import Any

from homeserver.server import HomeServer

log = logging.getLogger(__name__)

# A periodic job's first run waits this long after start-up.
FIRST_RUN_DELAY_S = 300.0


class LeaderService(ABC):
    def __init__(self, hs: HomeServer, name: str) -> None:
        self.hs = hs
        self.name = name
        self.leader = hs.db.leader(name)
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def _run(self) -> None:
        """The service's work, as long as it runs (cancelled by `stop`)."""

    async def start(self) -> None:
        await self.leader.start()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.leader.stop()


class PeriodicJob(LeaderService):
    def __init__(
        self, hs: HomeServer, name: str, interval_s: float, first_delay_s: float = FIRST_RUN_DELAY_S
    ) -> None:
        super().__init__(hs, name)
        self.interval_s = interval_s
        self.first_delay_s = first_delay_s

    @abstractmethod
    async def run_once(self) -> Any:
        """One pass of the job."""

    async def _run(self) -> None:
        await asyncio.sleep(self.first_delay_s)
        while True:
            if self.leader.is_leader:
                try:
                    await self.run_once()
                except Exception:
                    log.exception("the %s job failed", self.name)
            await asyncio.sleep(self.interval_s)
