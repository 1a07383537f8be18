"""In-room verification between the bot and matrix-js-sdk (Element's crypto, Rust via WASM).

Both directions end with each side trusting the other's *identity*: the js user's user-signing
key signs the bot's master key (js reports `isCrossSigningVerified()`), and the bot signs the
js user's master key (checked on the server with python-olm's Ed25519, an independent verifier).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from clients import Bot, Context, TrustMode, TrustPolicy
from clients.verification import SasPrompt, VerificationResult, Verifier
from tests.bot.conftest import BotFactory, running
from tests.bot.js_peer import JsClient, js_client
from tests.bot.peer import Peer
from tests.bot.test_bot_e2ee import joined
from tests.bot.test_cross_signing import keys_query, olm_verify
from tests.support.server import RunningServer

Peers = Callable[[str], Awaitable[Peer]]


@asynccontextmanager
async def element(
    server: RunningServer, bot: Bot, mode: str, localpart: str = "alice"
) -> AsyncIterator[JsClient]:
    """The js-sdk user in an encrypted DM with the running bot, ready to verify."""
    login = await server.login(localpart)
    env = {
        "HS_URL": server.base_url,
        "USER_ID": login["user_id"],
        "ACCESS_TOKEN": login["access_token"],
        "DEVICE_ID": login["device_id"],
        "PASSWORD": "password",
        "BOT_USER_ID": bot.user_id,
        "MODE": mode,
    }
    async with js_client("verify_client.mjs", env, login["user_id"], login["device_id"]) as js:
        yield js


def recording(answer: bool) -> tuple[list[SasPrompt], Callable[[SasPrompt], Awaitable[bool]]]:
    prompts: list[SasPrompt] = []

    async def confirm(prompt: SasPrompt) -> bool:
        prompts.append(prompt)
        return answer

    return prompts, confirm


async def master_key_signatures(server: RunningServer, bot: Bot, user_id: str) -> tuple[dict[str, Any], str]:
    """The user's master key as the bot sees it on the server, and the bot's user-signing key."""
    assert bot.client is not None
    token = bot.client.access_token
    theirs = await keys_query(server, token, user_id)
    own = await keys_query(server, token, bot.user_id)
    usk = next(iter(own["user_signing_keys"][bot.user_id]["keys"].values()))
    return theirs["master_keys"][user_id], usk


def assert_same_sas(prompt: SasPrompt, shown: dict[str, Any]) -> None:
    # Symbols, not names: nio calls 🔧 "Wrench" where the spec (and Rust) say "Spanner".
    assert [symbol for symbol, _ in prompt.emojis] == shown["emoji"]
    assert list(prompt.decimals) == shown["decimal"]


async def assert_bot_trusts(
    server: RunningServer, bot: Bot, result: VerificationResult, js: JsClient
) -> None:
    assert result.verified and (result.user_id, result.device_id) == (js.user_id, js.device_id)
    master, usk = await master_key_signatures(server, bot, js.user_id)
    master_public = next(iter(master["keys"].values()))
    assert result.master_key == master_public
    olm_verify(master, bot.user_id, usk)  # raises unless the bot's user-signing key signed it
    assert bot.client is not None and bot.client.device_store[js.user_id][js.device_id].verified
    assert bot.trust is not None and bot.trust.state.pins[js.user_id] == master_public


async def test_element_verifies_the_bot_in_a_dm(server: RunningServer, make_bot: BotFactory) -> None:
    # Only interactively verified devices are trusted, so the device trust below is this flow's.
    bot = make_bot(trust=TrustPolicy(TrustMode.VERIFIED))
    prompts, confirm = recording(True)
    verifier = Verifier(bot, confirm)
    async with running(bot, server), element(server, bot, "request") as js:
        await js.expect("READY")
        flow_id = await js.expect("REQUEST")
        shown = json.loads(await js.expect("SAS"))
        result = await asyncio.wait_for(verifier.results.get(), 60)
        await js.expect("VERIFIED")
        status = json.loads(await js.expect("STATUS"))
        assert await js.exit_code() == 0
        assert flow_id.startswith("$")
        assert_same_sas(prompts[0], shown)
        # js trusts the bot as a user (its USK signed the bot's master key) and so its device.
        assert status == {"user": True, "device": True, "local": True}
        await assert_bot_trusts(server, bot, result, js)
    assert len(prompts) == 1


async def test_the_bot_asks_element_to_verify(server: RunningServer, make_bot: BotFactory) -> None:
    bot = make_bot()
    prompts, confirm = recording(True)
    verifier = Verifier(bot, confirm)
    async with running(bot, server), element(server, bot, "accept") as js:
        room_id = await js.expect("ROOM")
        await js.expect("READY")
        flow_id = await verifier.request_in_room(room_id, js.user_id)
        assert await js.expect("REQUEST") == flow_id
        shown = json.loads(await js.expect("SAS"))
        result = await asyncio.wait_for(verifier.results.get(), 60)
        await js.expect("VERIFIED")
        status = json.loads(await js.expect("STATUS"))
        assert await js.exit_code() == 0
        assert_same_sas(prompts[0], shown)
        assert status == {"user": True, "device": True, "local": True}
        await assert_bot_trusts(server, bot, result, js)


async def test_a_mismatch_cancels_both_sides_and_signs_nothing(
    server: RunningServer, make_bot: BotFactory
) -> None:
    bot = make_bot(trust=TrustPolicy(TrustMode.VERIFIED))
    prompts, confirm = recording(False)
    verifier = Verifier(bot, confirm)
    async with running(bot, server), element(server, bot, "request") as js:
        await js.expect("READY")
        await js.expect("SAS")
        result = await asyncio.wait_for(verifier.results.get(), 60)
        assert await js.expect("CANCELLED") == "m.mismatched_sas"
        status = json.loads(await js.expect("STATUS"))
        assert await js.exit_code() == 0
        assert not result.verified and result.code == "m.mismatched_sas" and result.master_key is None
        assert status["user"] is False
        master, _ = await master_key_signatures(server, bot, js.user_id)
        assert bot.user_id not in master.get("signatures", {})
        assert bot.client is not None and not bot.client.device_store[js.user_id][js.device_id].verified
        assert verifier.rooms.flows == {}
    assert len(prompts) == 1


async def test_requests_from_strangers_or_for_others_get_no_answer(
    server: RunningServer, make_bot: BotFactory, peers: Peers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="clients.room_verification")
    bot = make_bot()
    _, confirm = recording(True)
    verifier = Verifier(bot, confirm, allowed_users=("@alice:*",))
    async with running(bot, server):
        alice = await peers("alice")
        mallory = await peers("mallory")
        room = await alice.create_room([bot.user_id, mallory.user_id])
        await mallory.step()
        await mallory.join(room)
        await mallory.wait_for(joined(mallory.user_id))
        await alice.wait_for(joined(bot.user_id))
        await alice.wait_for(joined(mallory.user_id), include_seen=True)

        def request(peer: Peer, to: str) -> dict[str, Any]:
            return {
                "msgtype": "m.key.verification.request",
                "body": "verify?",
                "from_device": peer.client.device_id,
                "methods": ["m.sas.v1"],
                "to": to,
            }

        # Handled in timeline order: once the third is answered, the first two were decided.
        from_stranger = await mallory.send(room, request(mallory, bot.user_id))
        for_someone_else = await alice.send(room, request(alice, mallory.user_id))
        answered = await alice.send(room, request(alice, bot.user_id))

        def relates_to(event: Any) -> str | None:
            relation = event.source.get("content", {}).get("m.relates_to") or {}
            return relation.get("event_id") if relation.get("rel_type") == "m.reference" else None

        ready = await alice.wait_for(
            lambda r, e: r == room and e.sender == bot.user_id and relates_to(e) == answered
        )
        assert ready.source["type"] == "m.key.verification.ready"
        assert ready.source["content"]["methods"] == ["m.sas.v1"]
        from_bot = [relates_to(e) for r, e in alice.events if r == room and e.sender == bot.user_id]
        assert from_stranger not in from_bot and for_someone_else not in from_bot
        # A third party cannot cancel (or otherwise step into) Alice's flow.
        relation = {"rel_type": "m.reference", "event_id": answered}
        cancel = {"code": "m.user", "reason": "no", "m.relates_to": relation}
        await mallory.send(room, cancel, event_type="m.key.verification.cancel")
        second = await alice.send(room, request(alice, bot.user_id))
        await alice.wait_for(lambda r, e: r == room and e.sender == bot.user_id and relates_to(e) == second)
        assert answered in verifier.rooms.flows
    # Decrypted and refused, not merely unreadable.
    assert f"ignoring verification request {from_stranger} from {mallory.user_id}" in caplog.text
    assert f"ignoring verification request {for_someone_else}: addressed to" in caplog.text


async def test_a_mac_without_the_master_key_verifies_the_device_only(
    server: RunningServer, make_bot: BotFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bot ↔ bot. The answering side MACs its device key only (as older clients do): the asking
    bot trusts that device but must not vouch for an identity the MAC did not prove."""
    asker, answerer = make_bot(store="asker"), make_bot(store="answerer", localpart="answerer")
    asker_prompts, asker_confirm = recording(True)
    answerer_prompts, answerer_confirm = recording(True)
    asking, answering = Verifier(asker, asker_confirm), Verifier(answerer, answerer_confirm)
    answerer_joined = asyncio.Event()

    @asker.on_membership
    async def seen(ctx: Context) -> None:
        if ctx.event.state_key == answerer.user_id and ctx.event.membership == "join":
            answerer_joined.set()

    async with running(asker, server), running(answerer, server):
        assert answerer.client is not None and answerer.cross_signing is not None
        device_only = {
            f"ed25519:{answerer.client.device_id}": answerer.client.olm.account.identity_keys["ed25519"]
        }
        monkeypatch.setattr(answering.rooms, "_own_keys", lambda: device_only)
        room = await asker.create_room(invite=(answerer.user_id,), direct=True)
        await asyncio.wait_for(answerer_joined.wait(), 20)
        await asking.request_in_room(room, answerer.user_id)
        asked = await asyncio.wait_for(asking.results.get(), 30)
        answered = await asyncio.wait_for(answering.results.get(), 30)
        assert asker_prompts[0].emojis == answerer_prompts[0].emojis
        assert asker_prompts[0].decimals == answerer_prompts[0].decimals
        # The asker proved its master key: the answerer signed it.
        assert answered.verified and answered.master_key is not None
        master, usk = await master_key_signatures(server, answerer, asker.user_id)
        olm_verify(master, answerer.user_id, usk)
        # The answerer did not: its device is verified, its identity not signed.
        assert asked.verified and asked.device_id == answerer.client.device_id and asked.master_key is None
        master, _ = await master_key_signatures(server, asker, answerer.user_id)
        assert asker.user_id not in master.get("signatures", {})
