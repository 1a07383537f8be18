"""The hang diagnostics name the await a stuck task is waiting on."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.diagnostics import task_dump_after


async def _stuck_forever(gate: asyncio.Event) -> None:
    await gate.wait()


async def test_task_dump_names_the_stuck_task(capsys: pytest.CaptureFixture[str]) -> None:
    gate = asyncio.Event()
    stuck = asyncio.create_task(_stuck_forever(gate), name="the-stuck-one")
    async with task_dump_after(0.05, "demo"):
        await asyncio.sleep(0.2)
    gate.set()
    await stuck
    err = capsys.readouterr().err
    assert "demo after 0s" in err
    assert "the-stuck-one" in err and "_stuck_forever" in err


async def test_no_dump_when_the_block_ends_in_time(capsys: pytest.CaptureFixture[str]) -> None:
    async with task_dump_after(5, "quick"):
        await asyncio.sleep(0)
    assert "pending asyncio tasks" not in capsys.readouterr().err
