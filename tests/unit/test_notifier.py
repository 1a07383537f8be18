"""The notifier's long-poll wait: woken, timed out or cancelled, it leaves nothing registered."""

from __future__ import annotations

import asyncio

import pytest

from homeserver.sync.notifier import Notifier


async def test_a_wait_times_out_false_and_unregisters() -> None:
    n = Notifier()
    assert await n.wait("@a:hs", ["!r:hs"], 0.01) is False
    assert n.waiting == 0
    # A notification after the timeout finds no stale waiter to wake.
    n.notify(rooms=["!r:hs"], users=["@a:hs"], local_only=True)


async def test_a_room_notification_wakes_only_that_rooms_waiters() -> None:
    n = Notifier()
    in_room = asyncio.create_task(n.wait("@a:hs", ["!r:hs"], 5))
    elsewhere = asyncio.create_task(n.wait("@b:hs", ["!other:hs"], 0.2))
    await asyncio.sleep(0)
    assert n.waiting == 2
    n.notify(rooms=["!r:hs"], local_only=True)
    assert await in_room is True
    assert await elsewhere is False
    assert n.waiting == 0


async def test_a_cancelled_wait_unregisters() -> None:
    n = Notifier()
    task = asyncio.create_task(n.wait("@a:hs", ["!r:hs"], 5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert n.waiting == 0


async def test_closing_wakes_every_waiter_and_refuses_new_ones() -> None:
    n = Notifier()
    task = asyncio.create_task(n.wait("@a:hs", [], 5))
    await asyncio.sleep(0)
    n.close()
    assert await task is True
    assert await n.wait("@a:hs", [], 5) is False
