"""The compiled evaluator (type-indexed candidates, per-event memo shared by recipients)
answers exactly as the rule-by-rule interpreter does."""

from __future__ import annotations

import random
from typing import Any

from homeserver.handlers.push_eval import RoomContext, evaluate, rule_matches
from homeserver.handlers.push_rules import LEGACY_MENTION_RULES, Ruleset, build_ruleset, strip_actions
from homeserver.storage.push import Override, UserRule

ME = "@alice:ex.org"
BOB = "@bob:ex.org"
ZED = "@zed:ex.org"


def interpreted(ruleset: Ruleset, event: dict[str, Any], user_id: str, room: RoomContext) -> list[Any] | None:
    content = event.get("content")
    has_mentions = isinstance(content, dict) and "m.mentions" in content
    for kind, rule in ruleset.ordered():
        if not rule.get("enabled", True):
            continue
        if has_mentions and rule["rule_id"] in LEGACY_MENTION_RULES:
            continue
        if rule_matches(kind, rule, event, user_id, room):
            actions = rule.get("actions", [])
            return strip_actions(actions) if isinstance(actions, list) else []
    return None


USER_RULES = [
    UserRule(
        "override",
        "o1",
        0,
        {
            "conditions": [{"kind": "event_match", "key": "content.body", "pattern": "sec*t"}],
            "actions": ["notify", {"set_tweak": "highlight"}],
        },
        True,
    ),
    UserRule(
        "override",
        "o2",
        1,
        {
            "conditions": [
                {"kind": "room_member_count", "is": ">5"},
                {"kind": "event_property_is", "key": "content.x", "value": 3},
                {"kind": "event_match", "key": "type", "pattern": "m.room.*"},
            ],
            "actions": ["dont_notify"],
        },
        True,
    ),
    UserRule("override", "o3", 2, {"conditions": [{"kind": "weird"}, 5], "actions": ["notify"]}, False),
    UserRule("content", "c1", 0, {"pattern": "pizza", "actions": ["notify"]}, True),
    UserRule("room", "!r2:ex.org", 0, {"actions": []}, True),
    UserRule("sender", "@spam:ex.org", 0, {"actions": []}, True),
    UserRule(
        "underride",
        "u1",
        0,
        {
            "conditions": [{"kind": "event_property_contains", "key": "content.tags", "value": "x"}],
            "actions": ["notify", "coalesce"],
        },
        True,
    ),
]


def test_compiled_rules_agree_with_the_interpreter() -> None:
    overrides = {
        ".m.rule.message": Override(None, ["notify", {"set_tweak": "sound", "value": "x"}]),
        ".m.rule.suppress_notices": Override(False, None),
    }
    rulesets = [
        build_ruleset(ME, [], {}),
        build_ruleset(BOB, [], {}),
        build_ruleset(ME, USER_RULES, overrides),
        build_ruleset(ZED, USER_RULES, {}),
        build_ruleset(ME, [], {".m.rule.master": Override(True, None)}),
    ]
    rnd = random.Random(7)
    bodies: list[Any] = ["hello", "Alice W said hi", "alice", "@room hey", "secret", "pizza!", "", 5, None]
    types = [
        "m.room.message",
        "M.ROOM.MESSAGE",
        "m.room.encrypted",
        "m.room.member",
        "m.reaction",
        "m.call.invite",
    ]
    matched = 0
    for _ in range(3000):
        content: dict[str, Any] = {}
        body = rnd.choice(bodies)
        if body is not None:
            content["body"] = body
        if rnd.random() < 0.3:
            content["msgtype"] = rnd.choice(["m.notice", "m.text"])
        if rnd.random() < 0.3:
            content["m.mentions"] = rnd.choice([{}, {"user_ids": [ME]}, {"room": True}, {"room": 1}])
        if rnd.random() < 0.2:
            content["m.relates_to"] = {"rel_type": rnd.choice(["m.replace", "m.thread"])}
        if rnd.random() < 0.2:
            content["x"] = rnd.choice([3, True, "3"])
        if rnd.random() < 0.2:
            content["tags"] = rnd.choice([["x"], "x", ["y", "x"]])
        if rnd.random() < 0.2:
            content["membership"] = "invite"
        event: dict[str, Any] = {
            "type": rnd.choice(types),
            "sender": rnd.choice([BOB, "@spam:ex.org", "@carol:ex.org"]),
            "room_id": rnd.choice(["!r:ex.org", "!r2:ex.org"]),
            "event_id": "$e",
            "content": content,
        }
        if rnd.random() < 0.3:
            event["state_key"] = rnd.choice(["", ME])
        room = RoomContext(
            rnd.choice([2, 3, 10]),
            {ME: rnd.choice(["Alice W", "", "bob"]), BOB: rnd.choice(["Bob", "hello"])},
            rnd.choice([{}, {"users": {BOB: 50}, "notifications": {"room": 50}}]),
        )
        memo: dict[str, bool] = {}
        for ruleset in rulesets:
            for user_id in (ME, BOB, ZED):
                want = interpreted(ruleset, event, user_id, room)
                assert evaluate(ruleset, event, user_id, room, memo) == want
                assert evaluate(ruleset, event, user_id, room) == want
                matched += want is not None
    assert matched > 1000
