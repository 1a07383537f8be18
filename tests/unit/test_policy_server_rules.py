"""The Policy Server's config and rules, and reading a room's `m.room.policy`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.policy import PolicyServerInfo, policy_from_content
from bridge.policy_server import PolicyRules, load_or_create_policy_key
from homeserver.config import ConfigError, config_from_dict
from homeserver.errors import MatrixError
from homeserver.events import Event, build_event, generate_signing_key
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.events.signing import encode_signing_key, encode_verify_key

KEY = encode_verify_key(generate_signing_key("x"))


def _config(policy: dict[str, Any], federation: bool = True) -> Any:
    return config_from_dict(
        {"server_name": "example.org", "federation": {"enabled": federation}, "policy_server": policy}
    )


def test_config_checks() -> None:
    cfg = _config({"enabled": True, "keywords": ["spam"], "blocked_users": ["@bot*:*"]})
    assert cfg.policy_server.keywords == ["spam"]
    assert _config({}).policy_server.enabled is False
    with pytest.raises(ConfigError, match="needs federation"):
        _config({"enabled": True}, federation=False)
    for bad in ({"keywords": "spam"}, {"blocked_users": [""]}, {"blocked_servers": [1]}):
        with pytest.raises(ConfigError, match="policy_server"):
            _config(bad)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"via": "ps.example.org", "public_keys": {"ed25519": KEY}}, PolicyServerInfo("ps.example.org", KEY)),
        (
            {"via": "ps.example.org", "public_keys": {"ed25519": KEY, "other": "x"}},
            PolicyServerInfo("ps.example.org", KEY),
        ),
        ({"via": "ps.example.org"}, None),
        ({"via": "ps.example.org", "public_keys": {}}, None),
        ({"via": "ps.example.org", "public_keys": {"ed25519": 5}}, None),
        ({"via": "ps.example.org", "public_keys": {"ed25519": "not base64!"}}, None),
        ({"via": "not a server name", "public_keys": {"ed25519": KEY}}, None),
        ({"via": 3, "public_keys": {"ed25519": KEY}}, None),
        ({}, None),
        ("x", None),
    ],
)
def test_a_rooms_policy_content(content: Any, expected: PolicyServerInfo | None) -> None:
    assert policy_from_content(content) == expected


def test_policy_key_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "policy.key"
    key = load_or_create_policy_key(str(path))
    assert key.version == "policy_server"
    assert path.stat().st_mode & 0o777 == 0o600
    assert encode_verify_key(load_or_create_policy_key(str(path))) == encode_verify_key(key)
    path.write_text(encode_signing_key(generate_signing_key("a_1")) + "\n")
    with pytest.raises(ValueError, match="version must be"):
        load_or_create_policy_key(str(path))


def _message(sender: str, content: dict[str, Any]) -> Event:
    return build_event(
        room_version=KNOWN_ROOM_VERSIONS["11"],
        room_id="!room:example.org",
        type="m.room.message",
        sender=sender,
        content=content,
        prev_event_ids=[],
        auth_event_ids=[],
        depth=5,
        origin_server_ts=1,
        server_name="example.org",
        signing_key=generate_signing_key("a_1"),
    )


def test_rules() -> None:
    rules = PolicyRules(
        _config(
            {"keywords": ["Cheap Pills"], "blocked_users": ["@spam*:*"], "blocked_servers": ["*.bad.example"]}
        ).policy_server
    )
    assert rules.refusal(_message("@alice:example.org", {"msgtype": "m.text", "body": "hello"})) is None
    assert rules.refusal(_message("@alice:example.org", {"body": "buy CHEAP pills now"})) == "keyword"
    # Anywhere in the content, keys included.
    assert (
        rules.refusal(_message("@alice:example.org", {"m.new_content": {"body": ["cheap pills"]}}))
        == "keyword"
    )
    assert rules.refusal(_message("@alice:example.org", {"cheap pills": 1})) == "keyword"
    assert rules.refusal(_message("@spammer:example.org", {"body": "hi"})) == "sender"
    assert rules.refusal(_message("@alice:mx.bad.example", {"body": "hi"})) == "server"
    assert rules.refusal(_message("@alice:bad.example", {"body": "hi"})) is None
    deep: dict[str, Any] = {"body": "x"}
    for _ in range(20):
        deep = {"k": deep}
    with pytest.raises(MatrixError):
        rules.refusal(_message("@alice:example.org", deep))
    assert PolicyRules(_config({}).policy_server).refusal(_message("@alice:example.org", deep)) is None
