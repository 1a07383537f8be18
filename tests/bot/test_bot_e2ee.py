"""The bot against a real Sotto server with a real matrix-nio user, end-to-end encrypted."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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
    server: RunningServer, make_bot: BotFactory, peers: Peers
) -> None:
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
