"""Commands, help, replies in threads, reactions both ways, typing, and what the bot ignores."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from nio import (
    ReactionEvent,
    RoomEncryptedFile,
    RoomMessageNotice,
    TypingNoticeEvent,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment

from clients import Bot, Context
from tests.bot.conftest import BotFactory, running
from tests.bot.peer import Peer
from tests.bot.test_bot_e2ee import joined
from tests.support.server import RunningServer

Peers = Callable[[str], Awaitable[Peer]]


async def setup_room(bot: Bot, alice: Peer) -> str:
    room = await alice.create_room([bot.user_id])
    await alice.wait_for(joined(bot.user_id))
    return room


async def test_help_usage_errors_threads_reactions_and_typing(
    server: RunningServer, make_bot: BotFactory, peers: Peers
) -> None:
    bot = make_bot()
    reactions: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()

    @bot.command("add", help="Add whole numbers.")
    async def add(ctx: Context, a: int, b: int) -> None:
        async with ctx.typing():
            await asyncio.sleep(0.3)
            await ctx.reply(f"{a + b}")

    @bot.command("ack")
    async def ack(ctx: Context) -> None:
        """React with a thumbs-up."""
        await ctx.react("👍")

    @bot.on_reaction
    async def on_reaction(ctx: Context, key: str, reacts_to: str) -> None:
        await reactions.put((ctx.sender, key, reacts_to))

    async with running(bot, server):
        alice = await peers("alice")
        room = await setup_room(bot, alice)

        await alice.send_text(room, "!help")
        help_reply = await alice.wait_for_reply(room, bot.user_id)
        assert "!add <a:int> <b:int>" in help_reply.body and "Add whole numbers." in help_reply.body
        assert "!ack" in help_reply.body and "React with a thumbs-up." in help_reply.body

        await alice.send_text(room, "!add 2 x")
        error = await alice.wait_for_reply(room, bot.user_id)
        assert "b must be a whole number" in error.body and "!add <a:int> <b:int>" in error.body

        # A command inside a thread is answered inside the same thread; typing shows meanwhile.
        root = await alice.send_text(room, "thread root")
        in_thread = await alice.send(
            room,
            {
                "msgtype": "m.text",
                "body": "!add 2 3",
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": root,
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": root},
                },
            },
        )
        answer = await alice.wait_for_reply(room, bot.user_id)
        assert isinstance(answer, RoomMessageNotice) and answer.decrypted and answer.body == "5"
        # The relation travels in clear next to the ciphertext, as the spec requires.
        assert answer.source["content"]["m.relates_to"] == {
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": False,
            "m.in_reply_to": {"event_id": in_thread},
        }
        assert any(isinstance(e, TypingNoticeEvent) and bot.user_id in e.users for _, e in alice.ephemeral), (
            "no typing notice seen"
        )

        # The bot reacts, encrypted.
        ack_id = await alice.send_text(room, "!ack")
        reaction = await alice.wait_for(lambda r, e: isinstance(e, ReactionEvent) and e.sender == bot.user_id)
        assert isinstance(reaction, ReactionEvent) and reaction.decrypted
        assert reaction.key == "👍" and reaction.reacts_to == ack_id
        assert reaction.source["content"]["m.relates_to"]["rel_type"] == "m.annotation"

        # Alice reacts to the bot's answer; the reaction handler sees it.
        await alice.send_encrypted(
            room,
            "m.reaction",
            {
                "m.relates_to": {"rel_type": "m.annotation", "event_id": answer.event_id, "key": "🎉"},
            },
        )
        sender, key, target = await asyncio.wait_for(reactions.get(), 15)
        assert (sender, key, target) == (alice.user_id, "🎉", answer.event_id)


async def test_clear_text_in_encrypted_room_and_own_messages_are_ignored(
    server: RunningServer, make_bot: BotFactory, peers: Peers
) -> None:
    bot = make_bot(replies_as_notices=False)
    seen: list[str] = []

    @bot.on_message
    async def on_message(ctx: Context) -> None:
        seen.append(ctx.body)
        if ctx.body == "loop?":
            await ctx.send("loop?")  # would loop forever if the bot handled its own messages

    async with running(bot, server):
        alice = await peers("alice")
        room = await setup_room(bot, alice)
        # A clear-text message injected into the encrypted room (as a malicious server could).
        async with (
            aiohttp.ClientSession() as s,
            s.put(
                f"{server.base_url}/_matrix/client/v3/rooms/{room}/send/m.room.message/forged1",
                json={"msgtype": "m.text", "body": "forged"},
                headers={"Authorization": f"Bearer {alice.client.access_token}"},
            ) as resp,
        ):
            assert resp.status == 200
        await alice.send_text(room, "loop?")
        await alice.wait_for_reply(room, bot.user_id)
        await asyncio.sleep(1.0)
    assert seen == ["loop?"]


async def test_encrypted_attachments_round_trip(
    server: RunningServer, make_bot: BotFactory, peers: Peers, tmp_path: Path
) -> None:
    bot = make_bot()

    @bot.on_file
    async def on_file(ctx: Context) -> None:
        data = await ctx.download()
        assert ctx.attachment is not None and ctx.attachment.encrypted
        await ctx.reply(f"sha256 {hashlib.sha256(data).hexdigest()}")
        await ctx.send_file(data[::-1], "reversed.bin", "application/octet-stream")

    payload = b"attachment secret " * 1000
    async with running(bot, server):
        alice = await peers("alice")
        room = await setup_room(bot, alice)
        upload, keys = await alice.client.upload(
            lambda *_: io.BytesIO(payload),
            content_type="application/octet-stream",
            filename="secret.bin",
            encrypt=True,
            filesize=len(payload),
        )
        assert isinstance(upload, UploadResponse) and keys is not None
        await alice.send(
            room,
            {
                "msgtype": "m.file",
                "body": "secret.bin",
                "info": {"size": len(payload)},
                "file": {"url": upload.content_uri, **keys},
            },
        )
        digest = await alice.wait_for_reply(room, bot.user_id)
        assert digest.body == f"sha256 {hashlib.sha256(payload).hexdigest()}"
        back = await alice.wait_for(lambda r, e: isinstance(e, RoomEncryptedFile) and e.sender == bot.user_id)
        assert isinstance(back, RoomEncryptedFile)
        downloaded = await alice.client.download(mxc=back.url)
        data = decrypt_attachment(downloaded.body, back.key["k"], back.hashes["sha256"], back.iv)
        assert data == payload[::-1]
    # The homeserver only ever held ciphertext.
    media: list[Any] = [p for p in (tmp_path / "media").rglob("*") if p.is_file()]
    assert media, "no media stored"
    for path in media:
        assert b"attachment secret" not in path.read_bytes()
        assert b"terces tnemhcatta" not in path.read_bytes()


async def test_clear_rooms_and_membership_handler(
    server: RunningServer, make_bot: BotFactory, peers: Peers
) -> None:
    bot = make_bot()
    members: list[tuple[str, str]] = []

    @bot.command("echo")
    async def echo(ctx: Context, *, text: str) -> None:
        await ctx.reply(text)

    @bot.on_membership
    async def on_member(ctx: Context) -> None:
        members.append((ctx.event.state_key, ctx.event.membership))

    async with running(bot, server):
        alice = await peers("alice")
        room = await alice.create_room([bot.user_id], encrypted=False)
        await alice.wait_for(joined(bot.user_id))
        await alice.send_text(room, "!echo in the clear")
        reply = await alice.wait_for_reply(room, bot.user_id)
        assert reply.body == "in the clear" and not reply.decrypted
        eve = await peers("eve")
        await alice.client.room_invite(room, eve.user_id)
        await eve.step()
        await eve.join(room)
        await alice.wait_for(joined(eve.user_id))
        await asyncio.sleep(1.0)
    assert (eve.user_id, "invite") in members and (eve.user_id, "join") in members


async def test_missed_events_are_handled_once_after_restart(
    server: RunningServer, make_bot: BotFactory, peers: Peers
) -> None:
    first = make_bot(process_missed_events=True)

    @first.command("echo")
    async def echo(ctx: Context, *, text: str) -> None:
        await ctx.reply(text)

    async with running(first, server):
        alice = await peers("alice")
        room = await alice.create_room([first.user_id])
        await alice.wait_for(joined(first.user_id))
        await alice.send_text(room, "!echo before")
        assert (await alice.wait_for_reply(room, first.user_id)).body == "before"

    # With process_missed_events, a command sent while the bot was down is answered on restart,
    # and nothing it had already answered is answered again.
    await alice.send_text(room, "!echo while you were away")
    again = make_bot(process_missed_events=True)

    @again.command("echo")
    async def echo_again(ctx: Context, *, text: str) -> None:
        await ctx.reply(text)

    async with running(again, server):
        late = await alice.wait_for_reply(room, again.user_id)
        assert late.body == "while you were away"
