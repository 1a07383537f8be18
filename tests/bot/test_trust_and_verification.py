"""Trust policy in a real room, and SAS verification driven through the Verifier (request → ready → start)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nio import MegolmEvent, ToDeviceMessage, UnknownToDeviceEvent
from nio.crypto import OlmDevice, Sas

from clients import Context, TrustMode, TrustPolicy
from clients.verification import SasPrompt, Verifier
from tests.bot.conftest import BotFactory, running
from tests.bot.peer import Peer
from tests.bot.test_bot_e2ee import joined
from tests.support.server import RunningServer

Peers = Callable[[str], Awaitable[Peer]]


async def test_allowlist_trust_blocks_others_both_ways(
    server: RunningServer, make_bot: BotFactory, peers: Peers
) -> None:
    bot = make_bot(trust=TrustPolicy(TrustMode.ALLOWLIST, ("@alice:*",)))
    handled: list[str] = []

    @bot.command("echo")
    async def echo(ctx: Context, *, text: str) -> None:
        handled.append(ctx.sender)
        await ctx.reply(text)

    async with running(bot, server):
        alice = await peers("alice")
        eve = await peers("eve")
        room = await alice.create_room([bot.user_id, eve.user_id])
        await eve.step()
        await eve.join(room)
        await eve.step()
        await alice.wait_for(joined(bot.user_id))
        await alice.wait_for(joined(eve.user_id), include_seen=True)
        # Eve's command decrypts but comes from a device the policy blocks: no handler runs.
        await eve.send_text(room, "!echo from eve")
        await alice.send_text(room, "!echo from alice")
        reply = await alice.wait_for_reply(room, bot.user_id)
        assert reply.body == "from alice" and reply.decrypted
        # Eve's device got no room key from the bot: she cannot read its answer.
        blind = await eve.wait_for(
            lambda r, e: r == room and e.sender == bot.user_id and e.source.get("type") != "m.room.member"
        )
        assert isinstance(blind, MegolmEvent)
        await asyncio.sleep(0.5)
    assert handled == [alice_id(server)]


def alice_id(server: RunningServer) -> str:
    return f"@alice:{server.server_name}"


async def test_sas_via_request_ready_and_a_rejected_one(
    server: RunningServer, make_bot: BotFactory, peers: Peers
) -> None:
    bot = make_bot()
    answers = [False, True]  # the operator rejects the first verification, accepts the second
    prompts: list[SasPrompt] = []

    async def confirm(prompt: SasPrompt) -> bool:
        prompts.append(prompt)
        return answers.pop(0)

    verifier = Verifier(bot, confirm)
    async with running(bot, server):
        assert bot.client is not None
        bot_device = str(bot.client.device_id)
        alice = await peers("alice")
        alice.client.olm.users_for_key_query.add(bot.user_id)
        await alice.client.keys_query()
        device = alice.client.device_store[bot.user_id][bot_device]

        for attempt, txn in enumerate(("txn-rejected", "txn-accepted")):
            # The modern flow: request, wait for ready, then start with the same transaction.
            await alice.client.to_device(
                ToDeviceMessage(
                    "m.key.verification.request",
                    bot.user_id,
                    bot_device,
                    {
                        "from_device": alice.client.device_id,
                        "methods": ["m.sas.v1"],
                        "transaction_id": txn,
                        "timestamp": 0,
                    },
                )
            )
            ready = await wait_to_device(alice, "m.key.verification.ready", txn)
            assert ready.source["content"]["methods"] == ["m.sas.v1"]
            sas = start_with_transaction(alice, device, txn)
            await alice.client.send_to_device_messages()
            confirmed = False
            async with asyncio.timeout(20):
                while not (sas.verified or sas.canceled):
                    await alice.step(timeout=200)
                    if getattr(sas, "their_sas_key", None) and not confirmed:
                        await alice.client.confirm_short_auth_string(txn)
                        confirmed = True
            result = await asyncio.wait_for(verifier.results.get(), 20)
            if attempt == 0:
                assert sas.canceled and not result.verified and result.reason == "mismatch"
            else:
                assert sas.verified and result.verified
                assert (result.user_id, result.device_id) == (alice.user_id, alice.client.device_id)
                await wait_to_device(alice, "m.key.verification.done", txn)
        # The operator was shown what Alice saw.
        assert prompts[-1].emojis == sas.get_emoji()
        assert bot.client.device_store[alice.user_id][alice.client.device_id].verified


def start_with_transaction(peer: Peer, device: OlmDevice, txn: str) -> Sas:
    """Start SAS under the request's transaction ID, as Element does (nio's API picks its own)."""
    olm = peer.client.olm
    sas = Sas(peer.user_id, str(peer.client.device_id), olm.account.identity_keys["ed25519"], device, txn)
    olm.key_verifications[txn] = sas
    olm.outgoing_to_device_messages.append(sas.start_verification())
    return sas


async def wait_to_device(peer: Peer, event_type: str, txn: str, seconds: float = 20) -> UnknownToDeviceEvent:
    async with asyncio.timeout(seconds):
        while True:
            resp = await peer.step(timeout=200)
            for event in resp.to_device_events:
                if (
                    isinstance(event, UnknownToDeviceEvent)
                    and event.type == event_type
                    and event.source.get("content", {}).get("transaction_id") == txn
                ):
                    return event
