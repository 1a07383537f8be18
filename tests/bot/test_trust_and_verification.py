"""Trust policy in a real room, and to-device SAS verification through the Verifier
(request → ready → start) between two bots, and who may take part in it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nio import MegolmEvent, ToDeviceMessage, ToDeviceResponse, UnknownToDeviceEvent

from clients import Context, TrustMode, TrustPolicy
from clients.verification import SasPrompt, Verifier
from tests.bot.conftest import BotFactory, running
from tests.bot.peer import Peer
from tests.bot.test_bot_e2ee import joined
from tests.bot.test_cross_signing import olm_verify
from tests.bot.test_room_verification import master_key_signatures
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


async def test_bot_to_bot_over_to_device_rejected_then_accepted(
    server: RunningServer, make_bot: BotFactory
) -> None:
    """`Verifier.start` (request → ready → start) between two bots; the answering operator
    rejects the first emoji and accepts the second. Both MACs prove the master keys, so each
    bot ends up signing the other's identity."""
    asker, answerer = make_bot(store="asker"), make_bot(store="answerer", localpart="answerer")
    answers = [False, True]
    asker_prompts: list[SasPrompt] = []
    answerer_prompts: list[SasPrompt] = []

    async def asker_confirm(prompt: SasPrompt) -> bool:
        asker_prompts.append(prompt)
        return True

    async def answerer_confirm(prompt: SasPrompt) -> bool:
        answerer_prompts.append(prompt)
        return answers.pop(0)

    asking, answering = Verifier(asker, asker_confirm), Verifier(answerer, answerer_confirm)
    async with running(asker, server), running(answerer, server):
        assert asker.client is not None and answerer.client is not None
        device_id = str(answerer.client.device_id)
        with pytest.raises(ValueError, match="no known device"):
            await asking.start(answerer.user_id, "NOSUCHDEVICE")
        txn = await asking.start(answerer.user_id, device_id)
        asked = await asyncio.wait_for(asking.results.get(), 30)
        answered = await asyncio.wait_for(answering.results.get(), 30)
        assert not asked.verified and asked.code == "m.mismatched_sas"
        assert not answered.verified and answered.code == "m.mismatched_sas"
        assert txn not in asking.devices.flows and txn not in answering.devices.flows

        await asking.start(answerer.user_id, device_id)
        asked = await asyncio.wait_for(asking.results.get(), 30)
        answered = await asyncio.wait_for(answering.results.get(), 30)
        # Both operators were shown the same SAS, each time.
        assert [p.emojis for p in asker_prompts] == [p.emojis for p in answerer_prompts]
        assert [p.decimals for p in asker_prompts] == [p.decimals for p in answerer_prompts]
        assert asker_prompts[0].emojis != asker_prompts[1].emojis  # a new key pair per flow
        assert asked.verified and (asked.user_id, asked.device_id) == (answerer.user_id, device_id)
        assert answered.verified and answered.user_id == asker.user_id
        assert asked.master_key is not None and answered.master_key is not None
        assert asker.client.device_store[answerer.user_id][device_id].verified
        assert answerer.client.device_store[asker.user_id][str(asker.client.device_id)].verified
        master, usk = await master_key_signatures(server, asker, answerer.user_id)
        olm_verify(master, asker.user_id, usk)


async def test_to_device_requests_from_strangers_stale_or_hijacked(
    server: RunningServer, make_bot: BotFactory, peers: Peers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clients.device_verification")
    bot = make_bot()

    async def confirm(prompt: SasPrompt) -> bool:
        return True

    verifier = Verifier(bot, confirm, allowed_users=("@alice:*",))
    async with running(bot, server):
        assert bot.client is not None
        bot_device = str(bot.client.device_id)
        alice = await peers("alice")
        mallory = await peers("mallory")

        async def send(peer: Peer, step: str, content: dict[str, Any]) -> None:
            message = ToDeviceMessage(f"m.key.verification.{step}", bot.user_id, bot_device, content)
            resp = await peer.client.to_device(message)
            assert isinstance(resp, ToDeviceResponse), resp

        def request(peer: Peer, txn: str, timestamp: int | None = None) -> dict[str, Any]:
            return {
                "from_device": peer.client.device_id,
                "methods": ["m.sas.v1"],
                "transaction_id": txn,
                "timestamp": int(time.time() * 1000) if timestamp is None else timestamp,
            }

        # Handled in order: once Alice's fresh request is answered, the first two were decided.
        await send(mallory, "request", request(mallory, "from-stranger"))
        await send(alice, "request", request(alice, "stale", timestamp=int(time.time() * 1000) - 11 * 60_000))
        await send(alice, "request", request(alice, "answered"))
        ready = await wait_to_device(alice, "m.key.verification.ready", "answered")
        assert ready.source["content"]["methods"] == ["m.sas.v1"]
        assert ready.source["content"]["from_device"] == bot_device
        # A third party cannot cancel (or otherwise step into) Alice's flow by its transaction ID.
        await send(mallory, "cancel", {"transaction_id": "answered", "code": "m.user", "reason": "no"})
        await send(alice, "request", request(alice, "second"))
        await wait_to_device(alice, "m.key.verification.ready", "second")
        assert "answered" in verifier.devices.flows
        assert set(verifier.devices.flows) == {"answered", "second"}
        resp = await mallory.step()
        assert not [e for e in resp.to_device_events if e.source.get("type", "").startswith("m.key.")]
    assert f"ignoring verification from-stranger from {mallory.user_id}: not an allowed user" in caplog.text
    assert f"ignoring verification request stale from {alice.user_id}: stale or future" in caplog.text


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


async def test_a_mac_of_the_master_key_only_trusts_the_identity_not_the_device(
    server: RunningServer, make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answering bot MACs its master key but not its device key: the asking bot signs that
    identity, yet must not mark a device the MAC did not prove as verified (only interactive
    verification trusts a device here, so that trust would be this flow's)."""
    asker = make_bot(store="asker", trust=TrustPolicy(TrustMode.VERIFIED))
    answerer = make_bot(store="answerer", localpart="answerer")

    async def yes(prompt: SasPrompt) -> bool:
        return True

    asking, answering = Verifier(asker, yes), Verifier(answerer, yes)
    async with running(asker, server), running(answerer, server):
        assert asker.client is not None and answerer.client is not None
        assert answerer.cross_signing is not None and answerer.cross_signing.keys is not None
        master = answerer.cross_signing.keys.master_public
        monkeypatch.setattr(answering.devices, "_own_keys", lambda: {f"ed25519:{master}": master})
        device_id = str(answerer.client.device_id)
        await asking.start(answerer.user_id, device_id)
        asked = await asyncio.wait_for(asking.results.get(), 30)
        assert (await asyncio.wait_for(answering.results.get(), 30)).verified
        assert asked.verified and asked.master_key == master
        assert not asker.client.device_store[answerer.user_id][device_id].verified
