"""Say where an asyncio test is stuck.

pytest-timeout and faulthandler print thread stacks, which for an asyncio test only show
the event loop idling in `select`. `task_dump_after` prints the stack of every pending
task instead, so a hang names the await it is stuck on.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
from collections.abc import AsyncIterator


def dump_tasks(title: str) -> str:
    out = io.StringIO()
    out.write(f"==== {title}: pending asyncio tasks ====\n")
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        out.write(f"--- {task.get_name()}\n")
        out.write(_await_chain(task.get_coro()))
    return out.getvalue()


def _await_chain(coro: object, depth: int = 40) -> str:
    """The coroutine's frames down the `await` chain to the innermost one (what it waits on)."""
    lines = []
    while coro is not None and depth > 0:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}\n")
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        if nxt is None and hasattr(coro, "gi_frame"):
            nxt = getattr(coro, "gi_yieldfrom", None)
        if nxt is None or nxt is coro:
            if coro is not None and frame is None:
                lines.append(f"  waiting on {coro!r}\n")
            break
        coro = nxt
        depth -= 1
    return "".join(lines)


@contextlib.asynccontextmanager
async def task_dump_after(seconds: float, title: str = "still running") -> AsyncIterator[None]:
    """Print every pending task's stack to stderr if the block runs longer than `seconds`."""

    async def watchdog() -> None:
        await asyncio.sleep(seconds)
        sys.stderr.write(dump_tasks(f"{title} after {seconds:.0f}s"))

    dog = asyncio.create_task(watchdog(), name="task-dump-watchdog")
    try:
        yield
    finally:
        dog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dog
