"""The admin API's job table: bounded in finished statuses, never forgetting a running job."""

from __future__ import annotations

import asyncio

import pytest

from homeserver.errors import MatrixError
from homeserver.handlers.admin_jobs import JobTable


async def test_running_jobs_are_kept_and_finished_ones_evicted_oldest_first() -> None:
    jobs: JobTable[str] = JobTable(limit=2, missing="no such job")
    release = asyncio.Event()

    async def work() -> None:
        await release.wait()

    for name in ("a", "b", "c"):
        jobs.start(name, f"status {name}", work())
    # Over the limit, but all running: every status stays.
    assert [jobs.get(n) for n in "abc"] == ["status a", "status b", "status c"]
    release.set()
    await jobs.wait()

    async def done() -> None:
        return None

    jobs.start("d", "status d", done())
    # Finished a and b go (the oldest), c and d stay.
    assert sorted(jobs.statuses()) == ["status c", "status d"]
    with pytest.raises(MatrixError) as e:
        jobs.get("a")
    assert (e.value.status, e.value.message) == (404, "no such job")
    await jobs.wait()
