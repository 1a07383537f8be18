"""`sotto-bot login --oauth` (the device authorisation grant) against a Sotto server with the
OAuth 2.0 API, then the bot running across access token renewals.

The person approving in a browser is played by POSTing the server's link page form. Tokens live
ten seconds (the server's minimum), so a bot that did not renew would stop answering.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clients import Bot, Context
from clients.store import OAUTH_FILE, StoreDir
from clients.token_refresh import TokenRefresher
from tests.bot.conftest import running
from tests.bot.peer import Peer, login_peer
from tests.bot.test_bot_e2ee import joined
from tests.bot.test_cli import sotto_bot
from tests.integration.e2ee.fixtures import CrossSigning
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

LIFETIME_MS = 10_000


@pytest.fixture
async def oauth_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with run_server(
        str(tmp_path / "hs"), oauth={"enabled": True, "access_token_lifetime_ms": LIFETIME_MS}
    ) as srv:
        await srv.register("bot", "bot-password")
        yield srv


async def decide(server: RunningServer, user_code: str, action: str) -> None:
    """The operator at the link page, signed in as the bot's account."""
    form = {"user_code": user_code, "username": "bot", "password": "bot-password", "action": action}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.base_url}/_sotto/oauth2/link", data=form) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def cli_login(server: RunningServer, store: str, action: str) -> tuple[int, str, str]:
    async with sotto_bot("login", "--homeserver", server.base_url, "--oauth", "--store", store) as cli:
        line = await cli.line_matching("stdout", "approve the code")
        code = re.search(r"approve the code (\S+)", line)
        assert code is not None
        link = await cli.line_matching("stdout", "open ")
        assert f"user_code={code.group(1)}" in link  # verification_uri_complete
        await decide(server, code.group(1), action)
        return await cli.finish(seconds=60)


def oauth_state(store: str) -> dict[str, Any]:
    data = StoreDir(store).read_json(OAUTH_FILE)
    assert data is not None
    return data


async def wait_for_refreshes(store: str, count: int, seconds: float = 40) -> None:
    """Until the store holds `count` refresh tokens more than now (each renewal writes one)."""
    seen = [oauth_state(store)["refresh_token"]]
    async with asyncio.timeout(seconds):
        while len(seen) <= count:
            await asyncio.sleep(0.2)
            token = oauth_state(store)["refresh_token"]
            if token != seen[-1]:
                seen.append(token)


def echo_bot(store: str) -> Bot:
    bot = Bot(store, sync_timeout_ms=500, shutdown_grace_s=2.0)

    @bot.command("echo")
    async def echo(ctx: Context, *, text: str) -> None:
        await ctx.reply(text)

    return bot


async def chat(bot: Bot, alice: Peer, room: str | None) -> str:
    """Alice's room with the bot (made on first call); the bot answers `!echo`."""
    if room is None:
        room = await alice.create_room([bot.user_id])
        await alice.wait_for(joined(bot.user_id))
    await alice.send_text(room, "!echo still here")
    reply = await alice.wait_for_reply(room, bot.user_id, seconds=30)
    assert reply.body == "still here" and reply.decrypted
    return room


async def test_oauth_login_then_the_bot_renews_its_token(
    oauth_server: RunningServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    surprises: list[str] = []
    original = TokenRefresher.after_soft_logout

    async def unplanned(self: TokenRefresher, token_used: str) -> bool:
        surprises.append("401")
        return await original(self, token_used)

    monkeypatch.setattr(TokenRefresher, "after_soft_logout", unplanned)
    store = str(tmp_path / "store")
    rc, out, err = await cli_login(oauth_server, store, "allow")
    assert rc == 0, err
    creds = json.loads((Path(store) / "credentials.json").read_text())
    assert creds["user_id"] == f"@bot:{oauth_server.server_name}"
    assert f"logged in as {creds['user_id']}, device {creds['device_id']}" in out
    assert "cross-signing master key:" in out
    state = oauth_state(store)
    assert state["device_id"] == creds["device_id"] and state["lifetime"] == LIFETIME_MS / 1000
    assert state["token_endpoint"].startswith(oauth_server.base_url)
    tokens = {creds["access_token"], state["refresh_token"]}
    assert not any(token in out + err for token in tokens)

    alice = await login_peer(oauth_server, str(tmp_path / "peers"), "alice")
    try:
        bot = echo_bot(store)
        async with running(bot, oauth_server):
            room = await chat(bot, alice, None)
            # Renewed before expiry, twice: each new pair works, and replaces the last.
            await wait_for_refreshes(store, 2)
            await chat(bot, alice, room)
            assert bot.client is not None
            tokens |= {bot.client.access_token, oauth_state(store)["refresh_token"]}
        # The bot never logged a token (nor did nio, at DEBUG).
        assert not any(token in caplog.text for token in tokens)
        # Restarted from the store, it renews with what the store kept.
        bot = echo_bot(store)
        async with running(bot, oauth_server):
            await wait_for_refreshes(store, 1)
            await chat(bot, alice, room)
    finally:
        await alice.close()
    assert surprises == []  # every renewal came before the token expired


async def test_an_expired_token_is_renewed_on_the_servers_soft_logout(
    oauth_server: RunningServer, tmp_path: Path
) -> None:
    """With no expiry to plan for, the bot learns from a 401 `soft_logout` and retries."""
    store = str(tmp_path / "store")
    assert (await cli_login(oauth_server, store, "allow"))[0] == 0
    alice = await login_peer(oauth_server, str(tmp_path / "peers"), "alice")
    try:
        bot = echo_bot(store)
        async with running(bot, oauth_server):
            assert bot.client is not None and bot.client.token_refresher is not None
            room = await chat(bot, alice, None)
            bot.client.token_refresher.session.expires_at = None  # only the server knows now
            await wait_for_refreshes(store, 1)
            assert bot.client.token_refresher.session.expires_at is not None  # learnt again
            bot.client.token_refresher.session.expires_at = None
            await wait_for_refreshes(store, 1)
            await chat(bot, alice, room)
    finally:
        await alice.close()


async def test_a_refused_login_fails_clearly(oauth_server: RunningServer, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    rc, _, err = await cli_login(oauth_server, store, "deny")
    assert rc == 1
    assert "OAuth login failed: the login was refused at the approval page" in err
    assert not (Path(store) / "credentials.json").exists()
    assert not (Path(store) / OAUTH_FILE).exists()


async def test_reset_cross_signing_is_approved_in_the_browser(
    oauth_server: RunningServer, tmp_path: Path
) -> None:
    """An identity the bot does not hold is replaced through the `m.oauth` stage: the bot logs
    the account page's URL and retries until the operator approves there."""
    other = await oauth_server.login("bot", "bot-password")  # a human's session, by password
    async with aiohttp.ClientSession() as http:
        human = RawClient(http, oauth_server.base_url, other["access_token"], other["user_id"])
        old = CrossSigning(human.user_id).upload_body()
        await human.ok("POST", "/keys/device_signing/upload", json=old)
        store = str(tmp_path / "store")
        args = ("login", "--homeserver", oauth_server.base_url, "--oauth", "--reset-cross-signing")
        async with sotto_bot(*args, "--store", store) as cli:
            code = re.search(r"approve the code (\S+)", await cli.line_matching("stdout", "approve the code"))
            assert code is not None
            await decide(oauth_server, code.group(1), "allow")
            line = await cli.line_matching("stderr", "needs your approval: open ")
            url = line.split("needs your approval: open ")[1].split()[0]
            assert "action=org.matrix.cross_signing_reset" in url
            # Until approved the bot waits; the old identity stands.
            query: dict[str, Any] = {"device_keys": {human.user_id: []}}
            assert (await human.ok("POST", "/keys/query", json=query))["master_keys"][human.user_id][
                "keys"
            ] == old["master_key"]["keys"]
            async with http.post(url, data={"username": "bot", "password": "bot-password"}) as resp:
                assert resp.status == 200
            rc, out, err = await cli.finish(seconds=60)
        assert rc == 0, err
        master = re.search(r"cross-signing master key: (\S+)", out)
        assert master is not None
        keys = (await human.ok("POST", "/keys/query", json=query))["master_keys"][human.user_id]["keys"]
        assert list(keys.values()) == [master.group(1)]
        assert keys != old["master_key"]["keys"]
