"""The bot against a real Sotto server with a real matrix-nio user, end-to-end encrypted."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
from nio import Event, RoomMemberEvent, RoomMessageNotice

from clients import Bot, Context
from tests.bot.conftest import BotFactory, running
from tests.bot.peer import Peer
from tests.support.server import RunningServer

Peers = Callable[[str], Awaitable[Peer]]


def echo_bot(bot: Bot) -> Bot:
    @bot.command("echo", help="Repeat the text.")
    async def echo(ctx: Context, *, text: str) -> None:
        await ctx.reply(text)

    return bot


def joined(user_id: str) -> Callable[[str, Event], bool]:
    return lambda _room, e: (
        isinstance(e, RoomMemberEvent) and e.state_key == user_id and e.membership == "join"
    )


async def test_encrypted_command_gets_encrypted_reply(
    server: RunningServer, make_bot: BotFactory, peers: Peers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="clients")
    caplog.set_level(logging.INFO)
    bot = echo_bot(make_bot())
    async with running(bot, server):
        alice = await peers("alice")
        room = await alice.create_room([bot.user_id])
        await alice.wait_for(joined(bot.user_id))
        command_id = await alice.send_text(room, "!echo hello **secret**")
        reply = await alice.wait_for_reply(room, bot.user_id)
        assert isinstance(reply, RoomMessageNotice), reply
        assert reply.decrypted, "the reply was not encrypted"
        assert reply.body == "hello **secret**"
        assert reply.formatted_body == "hello <strong>secret</strong>"
        assert reply.source["content"]["m.relates_to"] == {"m.in_reply_to": {"event_id": command_id}}
    # The bot logged the command (by event ID), never its text.
    assert command_id in caplog.text and "secret" not in caplog.text


async def test_bot_restarts_from_its_store_and_still_decrypts(
    server: RunningServer, make_bot: BotFactory, peers: Peers
) -> None:
    first = echo_bot(make_bot())
    async with running(first, server):
        device_id = first.client.device_id if first.client else None
        alice = await peers("alice")
        room = await alice.create_room([first.user_id])
        await alice.wait_for(joined(first.user_id))
        await alice.send_text(room, "!echo before")
        reply = await alice.wait_for_reply(room, first.user_id)
        assert reply.body == "before"

    # Sent while the bot is down: an old event, not handled after the restart.
    await alice.send_text(room, "!echo while-offline")

    # A new process: only the store path; credentials and crypto state come from the store.
    second = echo_bot(Bot(first.config.store_path, sync_timeout_ms=500, shutdown_grace_s=2.0))
    async with running(second, server):
        assert second.client is not None and second.client.device_id == device_id
        await alice.send_text(room, "!echo after")
        reply = await alice.wait_for_reply(room, second.user_id)
        assert reply.decrypted and reply.body == "after"


async def test_invites_are_accepted_per_allowlist(
    server: RunningServer, make_bot: BotFactory, peers: Peers
) -> None:
    bot = make_bot(allowed_inviters=("@alice:*",))
    async with running(bot, server):
        eve = await peers("eve")
        eve_room = await eve.create_room([bot.user_id])
        alice = await peers("alice")
        alice_room = await alice.create_room([bot.user_id])
        await alice.wait_for(joined(bot.user_id))
        left = await eve.wait_for(
            lambda r, e: (
                r == eve_room
                and isinstance(e, RoomMemberEvent)
                and e.state_key == bot.user_id
                and e.membership == "leave"
            )
        )
        assert left.sender == bot.user_id  # the bot declined the invite itself
        assert bot.client is not None
        assert alice_room in bot.client.rooms and eve_room not in bot.client.rooms
