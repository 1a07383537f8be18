"""To-device verification between the bot and matrix-js-sdk (Element's crypto, Rust via WASM).

The SAS is the one in-room verification uses (`clients.sas.SasSession`), so Element accepts it:
the bot answers a request from js (`requestDeviceVerification`) and js accepts the bot's request
(`Verifier.start`). Another user's device ends with both sides trusting each other's identity;
the bot's own other device ends cross-signed by the bot's self-signing key and trusting the
bot's identity, which the bot's MAC proved.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from clients import Bot, TrustMode, TrustPolicy
from clients.verification import Verifier
from tests.bot.conftest import BotFactory, running
from tests.bot.js_peer import JsClient, js_client
from tests.bot.test_cross_signing import keys_query, olm_verify
from tests.bot.test_room_verification import (
    assert_bot_trusts,
    assert_same_sas,
    master_key_signatures,
    recording,
)
from tests.support.server import RunningServer


@asynccontextmanager
async def element_session(
    server: RunningServer, bot: Bot, mode: str, localpart: str = "alice", own: bool = False
) -> AsyncIterator[JsClient]:
    """A js-sdk device (of `localpart`, or of the bot's own account) that verifies the bot's device."""
    assert bot.client is not None
    login = await server.login(localpart)
    env = {
        "HS_URL": server.base_url,
        "USER_ID": login["user_id"],
        "ACCESS_TOKEN": login["access_token"],
        "DEVICE_ID": login["device_id"],
        "PASSWORD": "password",
        "BOT_USER_ID": bot.user_id,
        "BOT_DEVICE_ID": str(bot.client.device_id),
        "MODE": mode,
        "OWN": "1" if own else "0",
    }
    async with js_client("device_verify_client.mjs", env, login["user_id"], login["device_id"]) as js:
        yield js


async def test_element_verifies_the_bots_device(server: RunningServer, make_bot: BotFactory) -> None:
    # Only interactively verified devices are trusted, so the device trust below is this flow's.
    bot = make_bot(trust=TrustPolicy(TrustMode.VERIFIED))
    prompts, confirm = recording(True)
    verifier = Verifier(bot, confirm)
    async with running(bot, server), element_session(server, bot, "request") as js:
        await js.expect("READY")
        txn = await js.expect("REQUEST")
        shown = json.loads(await js.expect("SAS"))
        result = await asyncio.wait_for(verifier.results.get(), 60)
        await js.expect("VERIFIED")
        status = json.loads(await js.expect("STATUS"))
        assert await js.exit_code() == 0
        assert_same_sas(prompts[0], shown)
        # Element trusts the bot's device, and its identity: the bot's MAC proved its master key.
        assert status == {"user": True, "device": True, "local": True}
        await assert_bot_trusts(server, bot, result, js)
        assert verifier.devices.flows == {} and txn
    assert len(prompts) == 1


async def test_the_bot_asks_elements_device_to_verify(server: RunningServer, make_bot: BotFactory) -> None:
    bot = make_bot()
    prompts, confirm = recording(True)
    verifier = Verifier(bot, confirm)
    async with running(bot, server), element_session(server, bot, "accept") as js:
        await js.expect("READY")
        txn = await verifier.start(js.user_id, js.device_id)
        assert await js.expect("REQUEST") == txn
        shown = json.loads(await js.expect("SAS"))
        result = await asyncio.wait_for(verifier.results.get(), 60)
        await js.expect("VERIFIED")
        status = json.loads(await js.expect("STATUS"))
        assert await js.exit_code() == 0
        assert_same_sas(prompts[0], shown)
        assert status == {"user": True, "device": True, "local": True}
        await assert_bot_trusts(server, bot, result, js)


async def test_a_mismatch_cancels_both_sides_and_trusts_nothing(
    server: RunningServer, make_bot: BotFactory
) -> None:
    bot = make_bot(trust=TrustPolicy(TrustMode.VERIFIED))
    prompts, confirm = recording(False)
    verifier = Verifier(bot, confirm)
    async with running(bot, server), element_session(server, bot, "request") as js:
        await js.expect("READY")
        await js.expect("SAS")
        result = await asyncio.wait_for(verifier.results.get(), 60)
        assert await js.expect("CANCELLED") == "m.mismatched_sas"
        status = json.loads(await js.expect("STATUS"))
        assert await js.exit_code() == 0
        assert not result.verified and result.code == "m.mismatched_sas" and result.master_key is None
        assert status == {"user": False, "device": False, "local": False}
        master, _ = await master_key_signatures(server, bot, js.user_id)
        assert bot.user_id not in master.get("signatures", {})
        assert bot.client is not None and not bot.client.device_store[js.user_id][js.device_id].verified
        assert verifier.devices.flows == {}
    assert len(prompts) == 1


async def test_the_bots_own_other_device(server: RunningServer, make_bot: BotFactory) -> None:
    """Element signed in to the bot's account verifies the bot: it learns to trust the account's
    identity from the bot's MAC, and the bot signs Element's device with its self-signing key."""
    bot = make_bot()
    prompts, confirm = recording(True)
    verifier = Verifier(bot, confirm)
    async with running(bot, server), element_session(server, bot, "request", "bot", own=True) as js:
        await js.expect("READY")
        shown = json.loads(await js.expect("SAS"))
        result = await asyncio.wait_for(verifier.results.get(), 60)
        await js.expect("VERIFIED")
        status = json.loads(await js.expect("STATUS"))
        assert await js.exit_code() == 0
        assert_same_sas(prompts[0], shown)
        assert status == {"user": True, "device": True, "local": True}
        assert result.verified and result.signed_device and result.master_key is None
        assert (result.user_id, result.device_id) == (bot.user_id, js.device_id)
        assert bot.client is not None and bot.client.device_store[bot.user_id][js.device_id].verified
        own = await keys_query(server, bot.client.access_token, bot.user_id)
        ssk = next(iter(own["self_signing_keys"][bot.user_id]["keys"].values()))
        olm_verify(own["device_keys"][bot.user_id][js.device_id], bot.user_id, ssk)
