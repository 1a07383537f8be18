"""The encrypted echo scenario, unchanged, against a real Synapse (the federation tests' harness).

The first run may install Synapse into .cache/synapse-venv (a minute or two); see
tests/federation/synapse.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from nio import RoomMemberEvent, RoomMessageNotice

from clients import Bot, Context
from clients.crosssigning import query_identity
from tests.bot.peer import login_peer_at
from tests.federation.support import make_ca
from tests.federation.synapse import SynapseServer

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    root = tmp_path_factory.mktemp("synapse-bot")
    server = SynapseServer(str(root / "synapse"), make_ca(str(root / "ca")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_encrypted_echo_against_synapse(synapse: SynapseServer, tmp_path: Path) -> None:
    await asyncio.to_thread(synapse.register, "echobot", "bot-password")
    await asyncio.to_thread(synapse.register, "alice", "password")
    bot_id = f"@echobot:{synapse.server_name}"
    bot = Bot(
        str(tmp_path / "bot-store"),
        homeserver=synapse.base_url,
        user_id=bot_id,
        password="bot-password",
        sync_timeout_ms=500,
        shutdown_grace_s=2.0,
    )

    @bot.command("echo")
    async def echo(ctx: Context, *, text: str) -> None:
        await ctx.reply(text)

    task = asyncio.create_task(bot.serve())
    alice = await login_peer_at(synapse.base_url, f"@alice:{synapse.server_name}", "password", str(tmp_path))
    try:
        await asyncio.wait_for(bot.ready.wait(), 60)
        room = await alice.create_room([bot_id])
        await alice.wait_for(
            lambda r, e: (
                r == room
                and isinstance(e, RoomMemberEvent)
                and e.state_key == bot_id
                and e.membership == "join"
            ),
            seconds=30,
        )
        command = await alice.send_text(room, "!echo hello synapse")
        reply = await alice.wait_for_reply(room, bot_id, seconds=30)
        assert isinstance(reply, RoomMessageNotice) and reply.decrypted
        assert reply.body == "hello synapse"
        assert reply.source["content"]["m.relates_to"] == {"m.in_reply_to": {"event_id": command}}
        # Cross-signing works on Synapse too: the bot's device is signed by its self-signing key.
        assert bot.client is not None
        identity = await query_identity(bot.client, bot_id)
        assert identity.device_cross_signed(str(bot.client.device_id))
    finally:
        await alice.close()
        await bot.stop()
        await asyncio.wait_for(task, 30)
