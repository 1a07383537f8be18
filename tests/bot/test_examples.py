"""The example bots in clients/examples/, against a real Sotto server and a nio user."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from clients import CommandError
from clients.examples import reminder, webhook_relay
from clients.store import StoreDir
from tests.bot.conftest import BotFactory, running
from tests.bot.peer import Peer
from tests.bot.test_bot_e2ee import joined
from tests.support.server import RunningServer, free_port

Peers = Callable[[str], Awaitable[Peer]]


def test_parse_duration() -> None:
    assert reminder.parse_duration("90s") == 90
    assert reminder.parse_duration("1h30m") == 5400
    assert reminder.parse_duration("2d") == 172800
    for bad in ("", "10", "soon", "0s", "400d"):
        with pytest.raises(CommandError):
            reminder.parse_duration(bad)


def test_reminder_book_orders_and_persists(tmp_path: Path) -> None:
    now = [1000.0]
    store = StoreDir(tmp_path)
    book = reminder.ReminderBook(store, lambda: now[0])
    late = book.add("!r", "@a:x", 60, "late")
    early = book.add("!r", "@a:x", 30, "early")
    assert book.due() == [] and book.seconds_to_next() == 30
    now[0] += 61
    assert [r.text for r in book.due()] == ["early", "late"]
    book.remove(early.id)
    again = reminder.ReminderBook(store, lambda: now[0])  # what a restart reads back
    assert list(again.items) == [late.id] and again.next_id == 3


async def test_reminder_bot_reminds_and_survives_restart(
    server: RunningServer, make_bot: BotFactory, peers: Peers
) -> None:
    bot = make_bot()
    reminder.install(bot)
    async with running(bot, server):
        alice = await peers("alice")
        room = await alice.create_room([bot.user_id])
        await alice.wait_for(joined(bot.user_id))
        await alice.send_text(room, "!remind 1s stand up")
        ack = await alice.wait_for_reply(room, bot.user_id)
        assert ack.body == "Reminder 1 set for 1s from now."
        due = await alice.wait_for_reply(room, bot.user_id)
        assert due.body == f"⏰ {alice.user_id}: stand up" and due.decrypted

        await alice.send_text(room, "!remind 2s after the restart")
        await alice.wait_for_reply(room, bot.user_id)
        await alice.send_text(room, "!reminders")
        listing = await alice.wait_for_reply(room, bot.user_id)
        assert "2: in " in listing.body and "after the restart" in listing.body
    await asyncio.sleep(2.2)  # falls due while the bot is down

    again = make_bot()
    reminder.install(again)
    async with running(again, server):
        late = await alice.wait_for_reply(room, again.user_id)
        assert late.body == f"⏰ {alice.user_id}: after the restart"


async def test_webhook_relay_posts_encrypted_messages(
    server: RunningServer, make_bot: BotFactory, peers: Peers
) -> None:
    bot = make_bot()
    await server.register("bot")
    alice = await peers("alice")
    room = await alice.create_room([bot.user_id])
    port = free_port()
    webhook_relay.install(bot, lambda: {"room": room, "token": "s3cret", "host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/hook"
    async with running(bot, server), aiohttp.ClientSession() as http:
        await alice.wait_for(joined(bot.user_id), include_seen=True)
        # Alice can see the join before the bot's own sync has brought it the room, and an
        # encrypted send to a room the bot does not know yet is refused (fail closed).
        for _ in range(400):
            if room in bot.require_client().rooms:
                break
            await asyncio.sleep(0.05)
        assert room in bot.require_client().rooms
        auth = {"Authorization": "Bearer s3cret"}
        async with http.post(url, json={"text": "deploy **done**"}, headers=auth) as resp:
            assert resp.status == 200
            event_id = (await resp.json())["event_id"]
        message = await alice.wait_for(lambda r, e: e.event_id == event_id)
        assert message.decrypted and message.body == "deploy **done**"
        assert message.formatted_body == "deploy <strong>done</strong>"

        async with http.post(url, data="plain text alert", headers=auth) as resp:
            assert resp.status == 200
        plain = await alice.wait_for_reply(room, bot.user_id)
        assert plain.body == "plain text alert"

        async with http.post(url, json={"text": "x"}, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with http.post(url, json={"text": "x" * 70_000}, headers=auth) as resp:
            assert resp.status == 413
        async with http.post(url, json={"nope": 1}, headers=auth) as resp:
            assert resp.status == 400
