"""Push rule evaluation against the spec's condition semantics and the default ruleset."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.push_eval import (
    RoomContext,
    condition_matches,
    evaluate,
    glob_matches,
    is_highlight,
    is_notify,
    split_key,
)
from homeserver.handlers.push_rules import build_ruleset
from homeserver.storage.push import Override, UserRule

ME = "@alice:example.org"


def msg(body: str, **content: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "sender": "@bob:example.org", "room_id": "!r:example.org",
            "content": {"msgtype": "m.text", "body": body, **content}}


def room(members: int = 3) -> RoomContext:
    return RoomContext(members, {ME: "Alice W", "@bob:example.org": "Bob"},
                       {"users": {"@bob:example.org": 50}, "notifications": {"room": 50}})


def test_split_key_escapes() -> None:
    assert split_key("content.m\\.mentions.user_ids") == ["content", "m.mentions", "user_ids"]
    assert split_key("a\\\\.b") == ["a\\", "b"]


def test_glob_word_boundaries_for_body() -> None:
    assert glob_matches("ex*ple", "An example event.", True)
    assert glob_matches("cake*lie", "the cake is a lie", True)
    assert not glob_matches("lunc?*", " lunch", False)
    assert glob_matches("lunc?*", "LUNCH", False)
    assert not glob_matches("ample", "example", True)


def test_event_property_is_is_type_exact() -> None:
    event = {"content": {"m.federate": True, "n": 1}}
    cond = {"kind": "event_property_is", "key": "content.m\\.federate", "value": True}
    assert condition_matches(cond, event, ME, room())
    assert not condition_matches({**cond, "value": 1}, event, ME, room())
    int_vs_bool = {"kind": "event_property_is", "key": "content.n", "value": True}
    assert not condition_matches(int_vs_bool, event, ME, room())


def test_unknown_condition_never_matches() -> None:
    assert not condition_matches({"kind": "org.example.new"}, msg("hi"), ME, room())


def test_defaults_message_mention_and_one_to_one() -> None:
    rules = build_ruleset(ME, [], {})
    plain = evaluate(rules, msg("hello"), ME, room())
    assert is_notify(plain) and not is_highlight(plain)
    named = evaluate(rules, msg("hey alice w, you there?"), ME, room())
    assert is_highlight(named)
    by_localpart = evaluate(rules, msg("ping alice"), ME, room())
    assert is_highlight(by_localpart)
    mention = evaluate(rules, msg("hi", **{"m.mentions": {"user_ids": [ME]}}), ME, room())
    assert is_highlight(mention)
    # With m.mentions present, body-based mention rules are skipped.
    intentional = evaluate(rules, msg("alice w", **{"m.mentions": {}}), ME, room())
    assert is_notify(intentional) and not is_highlight(intentional)
    dm = evaluate(rules, msg("hi"), ME, room(members=2))
    assert {"set_tweak": "sound", "value": "default"} in (dm or [])
    notice = evaluate(rules, msg("bot says", msgtype="m.notice"), ME, room())
    assert not is_notify(notice)
    edit = msg("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    assert not is_notify(evaluate(rules, edit, ME, room()))


def test_room_mention_needs_power() -> None:
    rules = build_ruleset(ME, [], {})
    event = msg("@room look", **{"m.mentions": {"room": True}})
    assert is_highlight(evaluate(rules, event, ME, room()))
    weak = {**event, "sender": "@mallory:example.org"}
    assert not is_highlight(evaluate(rules, weak, ME, room()))


def test_master_rule_and_user_rules() -> None:
    master_on = build_ruleset(ME, [], {".m.rule.master": Override(enabled=True)})
    assert evaluate(master_on, msg("alice"), ME, room()) == []
    muted = build_ruleset(ME, [UserRule("room", "!r:example.org", 0, {"actions": []}, True)], {})
    assert evaluate(muted, msg("hello"), ME, room()) == []
    # Override rules beat room rules, and user rules come before defaults of their kind.
    rules = build_ruleset(ME, [
        UserRule("override", "loud", 0, {"conditions": [
            {"kind": "event_match", "key": "content.body", "pattern": "fire"}],
            "actions": ["notify", {"set_tweak": "highlight"}]}, True),
        UserRule("room", "!r:example.org", 0, {"actions": []}, True),
    ], {})
    assert is_highlight(evaluate(rules, msg("fire in the hall"), ME, room()))
    assert [r["rule_id"] for r in rules.by_kind["override"]][:2] == [".m.rule.master", "loud"]
