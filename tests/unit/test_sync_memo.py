"""ReadMemo: reads shared by the syncs of one stream window."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from homeserver.sync.shared import ReadMemo


async def test_same_window_reads_once_and_shares_in_flight_reads() -> None:
    memo = ReadMemo()
    calls = 0
    gate = asyncio.Event()

    async def read() -> list[int]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return [1, 2]

    tasks = [asyncio.create_task(memo.get(5, ("k",), read)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == [[1, 2]] * 3
    assert await memo.get(5, ("k",), read) == [1, 2]
    assert calls == 1


async def test_newer_window_drops_older_entries_and_older_windows_bypass() -> None:
    memo = ReadMemo()
    calls: list[int] = []

    def reader(upto: int) -> Callable[[], Awaitable[int]]:
        async def read() -> int:
            calls.append(upto)
            return upto

        return read

    assert await memo.get(5, "k", reader(5)) == 5
    assert await memo.get(6, "k", reader(6)) == 6
    assert len(memo) == 1
    # A sync computed at an older position reads for itself and stores nothing.
    assert await memo.get(5, "k", reader(5)) == 5
    assert await memo.get(5, "k", reader(5)) == 5
    assert calls == [5, 6, 5, 5]
    assert len(memo) == 1


async def test_bounded() -> None:
    memo = ReadMemo(max_entries=3)

    async def read() -> int:
        return 1

    for i in range(10):
        await memo.get(1, i, read)
    assert len(memo) == 3


async def test_failed_read_is_not_kept_and_waiters_retry() -> None:
    memo = ReadMemo()
    gate = asyncio.Event()
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await gate.wait()
            raise RuntimeError("database went away")
        return "ok"

    first = asyncio.create_task(memo.get(1, "k", flaky))
    await asyncio.sleep(0)
    second = asyncio.create_task(memo.get(1, "k", flaky))
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(RuntimeError):
        await first
    assert await second == "ok"
    assert await memo.get(1, "k", flaky) == "ok"
    assert attempts == 2
