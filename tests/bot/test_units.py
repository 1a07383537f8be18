"""Pure parts of the SDK: command parsing and help, markdown, trust decisions, config, store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from clients import Bot, BotConfig, Context, TrustMode, TrustPolicy
from clients.commands import CommandError, CommandRegistry, tokenize
from clients.crosssigning import CrossSigningKeys, UserIdentity, key_object, sign_json
from clients.formatting import text_content
from clients.store import Credentials, StoreDir
from clients.trust import Decision, decide, matches


async def _remind(ctx: Context, minutes: int, *, text: str) -> None:
    """Remind you later.

    More detail."""


async def _add(ctx: Context, *numbers: float) -> None:
    pass


async def _flag(ctx: Context, on: bool, name: str = "all") -> None:
    pass


def registry() -> CommandRegistry:
    reg = CommandRegistry(prefix="!")
    reg.add("remind", _remind, aliases=("r",))
    reg.add("add", _add, help="Add numbers.")
    reg.add("flag", _flag)
    return reg


def parse(reg: CommandRegistry, body: str) -> tuple[str, list[Any], dict[str, Any]]:
    match = reg.match(body)
    assert match is not None
    command, argtext = match
    args, kwargs = command.parse(argtext)
    return command.name, args, kwargs


def test_command_parsing() -> None:
    reg = registry()
    assert parse(reg, '!remind 5 buy "oat milk"  today') == ("remind", [5], {"text": 'buy "oat milk"  today'})
    assert parse(reg, "!r 1 x") == ("remind", [1], {"text": "x"})
    assert parse(reg, "!add 1 2.5 -3") == ("add", [1.0, 2.5, -3.0], {})
    assert parse(reg, "!add") == ("add", [], {})
    assert parse(reg, "!flag yes") == ("flag", [True, "all"], {})
    assert parse(reg, "!flag off 'two words'") == ("flag", [False, "two words"], {})
    assert reg.match("remind 5 x") is None and reg.match("!unknown") is None and reg.match("!") is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("!remind", "missing minutes"),
        ("!remind five x", "minutes must be a whole number"),
        ("!remind 5", "missing text"),
        ("!add 1 two", "numbers must be a number"),
        ("!flag maybe", "on must be yes or no"),
        ("!flag on a b", "unexpected argument 'b'"),
        ('!flag on "open', "unclosed quote"),
    ],
)
def test_command_errors(body: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse(registry(), body)


def test_generated_help() -> None:
    reg = registry()
    text = reg.help_text()
    assert "- `!remind <minutes:int> <text…>` — Remind you later." in text
    assert "- `!add [numbers:float…]` — Add numbers." in text
    assert "- `!flag <on:bool> [name]`" in text
    detail = reg.help_text("remind")
    assert "More detail." in detail and "Aliases: !r" in detail
    assert "Unknown command" in reg.help_text("nope")


def test_bad_command_signatures_are_refused() -> None:
    reg = CommandRegistry()

    async def bad_type(ctx: Context, when: list[str]) -> None:
        pass

    async def two_rests(ctx: Context, *a: str, b: str) -> None:
        pass

    with pytest.raises(TypeError):
        reg.add("x", bad_type)
    with pytest.raises(TypeError):
        reg.add("y", two_rests)
    reg.add("z", _add)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("z", _add)


def test_tokenize_keeps_offsets() -> None:
    assert tokenize('a "b c"  d') == [("a", 1), ("b c", 7), ("d", 10)]


def test_markdown() -> None:
    assert text_content("plain") == {"msgtype": "m.text", "body": "plain"}
    rich = text_content("**bold** and `code`", msgtype="m.notice")
    assert rich["formatted_body"] == "<strong>bold</strong> and <code>code</code>"
    assert rich["format"] == "org.matrix.custom.html" and rich["msgtype"] == "m.notice"
    # Raw HTML from (possibly echoed) user input is escaped, never passed through.
    unsafe = text_content("<img src=x onerror=alert(1)> *hi*")
    assert "<img" not in unsafe["formatted_body"] and "&lt;img" in unsafe["formatted_body"]
    assert text_content("**x**", markdown=False) == {"msgtype": "m.text", "body": "**x**"}


def identity(user: str, device: str, cross_signed: bool) -> tuple[UserIdentity, str]:
    keys = CrossSigningKeys.generate()
    assert keys.master_seed is not None
    body = keys.upload_body(user)
    device_keys = {"user_id": user, "device_id": device, "keys": {}}
    if cross_signed:
        device_keys = sign_json(
            device_keys, keys.self_signing_seed, user, f"ed25519:{keys.self_signing_public}"
        )
    return UserIdentity(
        body["master_key"], body["self_signing_key"], None, {device: device_keys}
    ), keys.master_public


def test_trust_decisions() -> None:
    tofu = TrustPolicy()
    signed, master = identity("@a:x", "D", cross_signed=True)
    unsigned, _ = identity("@a:x", "D", cross_signed=False)
    # No cross-signing: trust the device on first use.
    assert decide(tofu, "@a:x", "D", None, None).decision is Decision.TRUST
    # First sight of an identity pins it; its signed devices are trusted.
    verdict = decide(tofu, "@a:x", "D", signed, None)
    assert verdict.decision is Decision.TRUST and verdict.pin == master
    assert decide(tofu, "@a:x", "D", signed, master).pin is None
    # A changed identity is never trusted silently; neither is a vanished one.
    assert decide(tofu, "@a:x", "D", signed, "someone-else").decision is Decision.BLOCK
    assert decide(tofu, "@a:x", "D", None, master).decision is Decision.BLOCK
    # Devices their owner did not cross-sign are excluded by default (MSC4153), allowed on request.
    assert decide(tofu, "@a:x", "D", unsigned, None).decision is Decision.BLOCK
    lax = TrustPolicy(exclude_insecure_devices=False)
    assert decide(lax, "@a:x", "D", unsigned, None).decision is Decision.TRUST
    allow = TrustPolicy(TrustMode.ALLOWLIST, ("@a:*",))
    assert decide(allow, "@a:x", "D", None, None).decision is Decision.TRUST
    assert decide(allow, "@b:x", "D", None, None).decision is Decision.BLOCK
    assert decide(TrustPolicy(TrustMode.VERIFIED), "@a:x", "D", signed, master).decision is Decision.BLOCK


def test_user_patterns() -> None:
    assert matches("@a:x.org", ["@*:x.org"]) and matches("@a:x.org", ["*"])
    assert not matches("@a:evil.x.org.evil", ["@*:x.org"]) and not matches("@a:y", [])


def test_config_from_env() -> None:
    cfg = BotConfig.from_env(
        {
            "SOTTO_BOT_STORE": "/s",
            "SOTTO_BOT_HOMESERVER": "https://hs",
            "SOTTO_BOT_USER": "@b:hs",
            "SOTTO_BOT_PASSWORD": "pw",
            "SOTTO_BOT_INVITERS": "@a:hs, @*:friends.org",
            "SOTTO_BOT_TRUST": "allowlist",
            "SOTTO_BOT_TRUSTED_USERS": "@a:hs",
            "SOTTO_BOT_ENCRYPTION": "yes",
        },
        command_prefix="?",
    )
    assert cfg.store_path == "/s" and cfg.user_id == "@b:hs" and cfg.command_prefix == "?"
    assert cfg.allowed_inviters == ("@a:hs", "@*:friends.org")
    assert cfg.trust == TrustPolicy(TrustMode.ALLOWLIST, ("@a:hs",))
    assert "pw" not in repr(cfg)  # secrets stay out of logs
    assert BotConfig.from_env({}).store_path == "bot-store"


def test_store_files_are_private_and_atomic(tmp_path: Path) -> None:
    store = StoreDir(tmp_path / "store")
    creds = Credentials("https://hs", "@b:hs", "DEV", "syt_secret")
    store.save_credentials(creds)
    assert store.load_credentials() == creds
    assert "syt_secret" not in repr(creds)
    assert os.stat(store.path).st_mode & 0o077 == 0
    assert os.stat(store.path / "credentials.json").st_mode & 0o077 == 0
    assert [p.name for p in store.path.iterdir()] == ["credentials.json"]  # no temp files left


def test_reply_relations() -> None:
    from nio import RoomMessageText

    bot = Bot("unused-store")

    def ctx_for(content: dict[str, Any]) -> Context:
        source = {
            "type": "m.room.message",
            "event_id": "$e",
            "sender": "@a:x",
            "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": "hi", **content},
        }
        event = RoomMessageText.from_dict(source)
        return Context(bot, room=None, event=event)

    plain = ctx_for({})
    assert plain.reply_relation() == {"m.in_reply_to": {"event_id": "$e"}}
    assert plain.reply_relation(thread=True) == {
        "rel_type": "m.thread",
        "event_id": "$e",
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": "$e"},
    }
    threaded = ctx_for({"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}})
    assert threaded.thread_root == "$root"
    assert threaded.reply_relation() == {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": False,
        "m.in_reply_to": {"event_id": "$e"},
    }


def test_key_object_shape() -> None:
    assert key_object("@b:x", "master", "PUB") == {
        "user_id": "@b:x",
        "usage": ["master"],
        "keys": {"ed25519:PUB": "PUB"},
    }
