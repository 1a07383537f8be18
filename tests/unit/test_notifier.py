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


async def test_held_notifications_are_delivered_once_when_the_block_ends() -> None:
    n = Notifier()
    published: list[tuple[list[str], list[str]]] = []
    n.remote_publishers.append(lambda rooms, users: published.append((sorted(rooms), sorted(users))))
    waiter = asyncio.create_task(n.wait("@a:hs", ["!r:hs"], 5))
    await asyncio.sleep(0)
    with n.held(most=5):
        n.notify(rooms=["!r:hs"])
        n.notify(rooms=["!r:hs"], users=["@b:hs"])
        n.notify(users=["@c:hs"], local_only=True)  # woken here, never forwarded
        await asyncio.sleep(0.05)
        assert not waiter.done()
        assert published == []
    assert await waiter is True
    assert published == [(["!r:hs"], ["@b:hs"])]


async def test_a_long_block_delivers_every_most_seconds() -> None:
    n = Notifier()
    waiter = asyncio.create_task(n.wait("@a:hs", ["!r:hs"], 5))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    with n.held(most=0.05):
        started = loop.time()
        n.notify(rooms=["!r:hs"], local_only=True)
        assert await waiter is True
        assert loop.time() - started < 1  # the timer: the block is still running
        # Held again after the timer: the next notification waits for its own.
        second = asyncio.create_task(n.wait("@a:hs", ["!r:hs"], 5))
        await asyncio.sleep(0)
        n.notify(rooms=["!r:hs"], local_only=True)
        await asyncio.sleep(0)
        assert not second.done()
        assert await second is True


async def test_other_tasks_notifications_are_not_held() -> None:
    n = Notifier()
    waiter = asyncio.create_task(n.wait("@a:hs", ["!r:hs"], 5))
    release = asyncio.Event()

    async def holding() -> None:
        with n.held(most=5):
            await release.wait()

    holder = asyncio.create_task(holding())
    await asyncio.sleep(0)
    n.notify(rooms=["!r:hs"], local_only=True)  # this task holds nothing
    assert await asyncio.wait_for(waiter, 1) is True
    release.set()
    await holder
