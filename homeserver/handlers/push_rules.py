"""Push rules as data: the server-default ruleset and a user's effective ruleset.

A user's ruleset is assembled in the spec's evaluation order: `.m.rule.master`, then
per kind the user's own rules (by their priority) before the server defaults of that
kind. Server-default rules live here, in code; a user may only toggle them or change
their actions (stored as overrides).

The legacy body-mention rules (`.m.rule.contains_display_name`,
`.m.rule.contains_user_name`, `.m.rule.roomnotif`) were dropped from the spec in
v1.17 but are kept, as Synapse does, because many clients (bots, nio) still send
mentions only in the body; they are skipped for events that carry `m.mentions`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from homeserver.storage.push import Override, UserRule

KINDS = ("override", "content", "room", "sender", "underride")
# MSC4306's kind (with thread subscriptions on): server rules only, after `content`.
POSTCONTENT = "postcontent"
_EVALUATION_ORDER = ("override", "content", POSTCONTENT, "room", "sender", "underride")
LEGACY_MENTION_RULES = frozenset(
    {".m.rule.contains_display_name", ".m.rule.contains_user_name", ".m.rule.roomnotif"}
)

_SOUND = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}
_NO_HIGHLIGHT = {"set_tweak": "highlight", "value": False}


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _default_overrides(user_id: str) -> list[dict[str, Any]]:
    return [
        {
            "rule_id": ".m.rule.suppress_notices",
            "conditions": [_match("content.msgtype", "m.notice")],
            "actions": [],
        },
        {
            "rule_id": ".m.rule.invite_for_me",
            "conditions": [
                _match("type", "m.room.member"),
                _match("content.membership", "invite"),
                _match("state_key", user_id),
            ],
            "actions": ["notify", _SOUND],
        },
        {"rule_id": ".m.rule.member_event", "conditions": [_match("type", "m.room.member")], "actions": []},
        {
            "rule_id": ".m.rule.is_user_mention",
            "conditions": [
                {"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id}
            ],
            "actions": ["notify", _SOUND, _HIGHLIGHT],
        },
        {
            "rule_id": ".m.rule.contains_display_name",
            "conditions": [{"kind": "contains_display_name"}],
            "actions": ["notify", _SOUND, _HIGHLIGHT],
        },
        {
            "rule_id": ".m.rule.is_room_mention",
            "conditions": [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            "actions": ["notify", _HIGHLIGHT],
        },
        {
            "rule_id": ".m.rule.roomnotif",
            "conditions": [
                _match("content.body", "@room"),
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            "actions": ["notify", _HIGHLIGHT],
        },
        {
            "rule_id": ".m.rule.tombstone",
            "conditions": [_match("type", "m.room.tombstone"), _match("state_key", "")],
            "actions": ["notify", _HIGHLIGHT],
        },
        {"rule_id": ".m.rule.reaction", "conditions": [_match("type", "m.reaction")], "actions": []},
        {
            "rule_id": ".m.rule.room.server_acl",
            "conditions": [_match("type", "m.room.server_acl"), _match("state_key", "")],
            "actions": [],
        },
        {
            "rule_id": ".m.rule.suppress_edits",
            "conditions": [
                {"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}
            ],
            "actions": [],
        },
    ]


def _default_content(user_id: str) -> list[dict[str, Any]]:
    localpart = user_id[1:].split(":", 1)[0]
    return [
        {
            "rule_id": ".m.rule.contains_user_name",
            "pattern": localpart,
            "actions": ["notify", _SOUND, _HIGHLIGHT],
        }
    ]


def _default_underrides() -> list[dict[str, Any]]:
    return [
        {
            "rule_id": ".m.rule.call",
            "conditions": [_match("type", "m.call.invite")],
            "actions": ["notify", {"set_tweak": "sound", "value": "ring"}, _NO_HIGHLIGHT],
        },
        {
            "rule_id": ".m.rule.encrypted_room_one_to_one",
            "conditions": [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
            "actions": ["notify", _SOUND, _NO_HIGHLIGHT],
        },
        {
            "rule_id": ".m.rule.room_one_to_one",
            "conditions": [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
            "actions": ["notify", _SOUND, _NO_HIGHLIGHT],
        },
        {
            "rule_id": ".m.rule.message",
            "conditions": [_match("type", "m.room.message")],
            "actions": ["notify"],
        },
        {
            "rule_id": ".m.rule.encrypted",
            "conditions": [_match("type", "m.room.encrypted")],
            "actions": ["notify"],
        },
    ]


def _default_postcontent() -> list[dict[str, Any]]:
    """MSC4306 (as Synapse): in a thread, those not subscribed to it are not notified and its
    subscribers are; mentions (override rules) still notify either."""
    return [
        {
            "rule_id": ".io.element.msc4306.rule.unsubscribed_thread",
            "conditions": [{"kind": "io.element.msc4306.thread_subscription", "subscribed": False}],
            "actions": [],
        },
        {
            "rule_id": ".io.element.msc4306.rule.subscribed_thread",
            "conditions": [{"kind": "io.element.msc4306.thread_subscription", "subscribed": True}],
            "actions": ["notify", _SOUND],
        },
    ]


MASTER = {"rule_id": ".m.rule.master", "conditions": [], "actions": [], "enabled": False}


def default_rules(user_id: str, thread_subscriptions: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Server-default rules by kind (master excluded), each with default=True and enabled=True.
    With thread subscriptions on, the `postcontent` kind too."""
    rules = {
        "override": _default_overrides(user_id),
        "content": _default_content(user_id),
        "room": [],
        "sender": [],
        "underride": _default_underrides(),
    }
    if thread_subscriptions:
        rules[POSTCONTENT] = _default_postcontent()
    for kind_rules in rules.values():
        for rule in kind_rules:
            rule["default"] = True
            rule.setdefault("enabled", True)
    return rules


@dataclass(slots=True)
class Ruleset:
    """A user's effective rules by kind, in evaluation order (master first in override)."""

    by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # The evaluator's compiled form (homeserver.handlers.push_eval), built on first use.
    compiled: Any = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"global": copy.deepcopy(self.by_kind)}

    def find(self, kind: str, rule_id: str) -> dict[str, Any] | None:
        for rule in self.by_kind.get(kind, []):
            if rule["rule_id"] == rule_id:
                return rule
        return None

    def ordered(self) -> list[tuple[str, dict[str, Any]]]:
        return [(kind, rule) for kind in _EVALUATION_ORDER for rule in self.by_kind.get(kind, [])]


def _implied_conditions(kind: str, rule_id: str, rule: dict[str, Any]) -> dict[str, Any]:
    """Room and sender rules have conditions implied by their rule_id."""
    out = {"rule_id": rule_id, "default": False, "actions": rule.get("actions", [])}
    if kind in ("override", "underride"):
        out["conditions"] = rule.get("conditions", [])
    elif kind == "content":
        out["pattern"] = rule.get("pattern", "")
    return out


def build_ruleset(
    user_id: str,
    user_rules: list[UserRule],
    overrides: dict[str, Override],
    thread_subscriptions: bool = False,
) -> Ruleset:
    defaults = default_rules(user_id, thread_subscriptions)
    mine: dict[str, list[UserRule]] = {k: [] for k in KINDS}
    for r in user_rules:
        if r.kind in mine:
            mine[r.kind].append(r)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for kind in _EVALUATION_ORDER:
        if kind not in defaults:
            continue
        rules: list[dict[str, Any]] = []
        if kind == "override":
            rules.append({**copy.deepcopy(MASTER), "default": True})
        for r in sorted(mine.get(kind, []), key=lambda r: r.priority):
            rule = _implied_conditions(kind, r.rule_id, r.rule)
            rule["enabled"] = r.enabled
            rules.append(rule)
        rules.extend(defaults[kind])
        for rule in rules:
            ov = overrides.get(rule["rule_id"]) if rule.get("default") else None
            if ov is not None:
                if ov.enabled is not None:
                    rule["enabled"] = ov.enabled
                if ov.actions is not None:
                    rule["actions"] = ov.actions
        by_kind[kind] = rules
    return Ruleset(by_kind)


def is_default_rule_id(rule_id: str) -> bool:
    return rule_id.startswith(".")


def strip_actions(actions: list[Any]) -> list[Any]:
    """Historical actions are ignored (the spec says to strip them)."""
    return [a for a in actions if a not in ("dont_notify", "coalesce")]
