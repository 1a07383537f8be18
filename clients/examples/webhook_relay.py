"""Webhook relay: an HTTP POST becomes a (encrypted) message in a room.

    curl -H "Authorization: Bearer $SOTTO_WEBHOOK_TOKEN" -d '{"text": "deploy **done**"}' \\
         http://127.0.0.1:8787/hook

Settings (environment): SOTTO_WEBHOOK_ROOM (room ID or alias, required), SOTTO_WEBHOOK_TOKEN
(shared secret, required), SOTTO_WEBHOOK_HOST (default 127.0.0.1), SOTTO_WEBHOOK_PORT (8787).
The body is JSON `{"text": "...", "notice": false}` or plain text; markdown is rendered. Answers:
200 `{"event_id": ...}`, 401 bad token, 400 bad body, 413 too large, 502 if Matrix refused it.
The bot must be in the room (invite it; it auto-joins per its invite allowlist).

Run: `sotto-bot run clients/examples/webhook_relay.py`.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from aiohttp import web

from clients import Bot, BotError, SendError

log = logging.getLogger("webhook_relay")

MAX_BODY_BYTES = 64 * 1024
MAX_TEXT_CHARS = 16_000


def create_app(bot: Bot, room: str, token: str) -> web.Application:
    """The relay's HTTP app: one authenticated endpoint, bounded input, no body in logs."""
    if not token:
        raise ValueError("the webhook token must not be empty")
    expected = f"Bearer {token}".encode()

    async def hook(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return web.json_response({"error": "bad token"}, status=401)
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return web.json_response({"error": "too large"}, status=413)
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            return web.json_response({"error": "too large"}, status=413)
        notice = False
        try:
            if request.content_type == "application/json" or raw.lstrip().startswith(b"{"):
                data = json.loads(raw)
                text, notice = data.get("text"), bool(data.get("notice", False))
            else:
                text = raw.decode()
        except (ValueError, UnicodeDecodeError, AttributeError):
            return web.json_response({"error": 'body must be JSON {"text": ...} or UTF-8 text'}, status=400)
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
            return web.json_response({"error": "text must be a non-empty string"}, status=400)
        try:
            room_id = await bot.resolve_room(room)
            event_id = await bot.send_text(room_id, text, notice=notice)
        except SendError as exc:
            log.warning("relay failed: %s", exc)
            return web.json_response({"error": "the homeserver refused the message"}, status=502)
        log.info("relayed a webhook to %s as %s", room_id, event_id)
        return web.json_response({"event_id": event_id})

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/hook", hook)
    return app


async def start_relay(bot: Bot, room: str, token: str, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(create_app(bot, room, token))
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("webhook relay listening on http://%s:%d/hook", host, port)
    return runner


def install(bot: Bot, settings: Callable[[], dict[str, Any]]) -> None:
    """Serve the relay while the bot runs (from its first sync until shutdown)."""
    runners: list[web.AppRunner] = []

    @bot.on_startup
    async def start_http() -> None:
        runners.append(await start_relay(bot, **settings()))

    @bot.on_shutdown
    async def stop_http() -> None:
        for runner in runners:
            await runner.cleanup()


def settings_from_env() -> dict[str, Any]:
    try:
        room, token = os.environ["SOTTO_WEBHOOK_ROOM"], os.environ["SOTTO_WEBHOOK_TOKEN"]
    except KeyError as missing:
        raise BotError(f"set {missing.args[0]} to run the webhook relay") from None
    return {
        "room": room,
        "token": token,
        "host": os.environ.get("SOTTO_WEBHOOK_HOST", "127.0.0.1"),
        "port": int(os.environ.get("SOTTO_WEBHOOK_PORT", "8787")),
    }


bot = Bot.from_env()
install(bot, settings_from_env)

if __name__ == "__main__":
    bot.run()
