"""Push rule evaluation: a pure function of a ruleset, an event and the room's context.

No I/O here, so the rules are unit-testable with plain dicts. Glob patterns are
compiled once and cached (bounded by functools' LRU).

`evaluate` runs once per recipient of every event, so a ruleset is compiled on first
use into a list of enabled rules, each a chain of small matcher functions with its key
paths split, its patterns compiled and its actions stripped (cached on the Ruleset,
which is rebuilt whenever the user's rules change). `condition_matches` and
`rule_matches` keep the interpreted form; both give the same answers.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from homeserver.handlers.push_rules import LEGACY_MENTION_RULES, Ruleset, strip_actions

_WORD = "A-Za-z0-9_"


@dataclass(slots=True)
class RoomContext:
    """What conditions need to know about the room, shared by every recipient of one event."""

    member_count: int
    display_names: dict[str, str] = field(default_factory=dict)
    power_levels: dict[str, Any] = field(default_factory=dict)
    # Room v12 creators have infinite power.
    creators: frozenset[str] = frozenset()
    # The joined members on this server (filled in by the push handler on first use).
    local_members: list[str] | None = None
    # Thread subscriptions (MSC4306), per event (a copy of the room's context, made only for
    # events with a relation while they are on): the local users subscribed to the event's
    # thread, None when it is in no thread. `thread_unknown`: the event relates to another
    # whose thread is not looked up yet; a rule asking then does not match and sets
    # `thread_wanted`, and the push handler looks the thread up and evaluates again.
    thread_subscribers: frozenset[str] | None = None
    thread_unknown: bool = False
    thread_wanted: bool = False

    def user_power(self, user_id: str) -> float:
        if user_id in self.creators:
            return float("inf")
        users = self.power_levels.get("users")
        if isinstance(users, dict) and isinstance(users.get(user_id), int):
            return float(users[user_id])
        default = self.power_levels.get("users_default", 0)
        return float(default) if isinstance(default, int) else 0.0

    def notification_level(self, key: str) -> float:
        notifications = self.power_levels.get("notifications")
        if isinstance(notifications, dict) and isinstance(notifications.get(key), int):
            return float(notifications[key])
        return 50.0


def split_key(key: str) -> list[str]:
    """A dot-separated property path; `\\.` is a literal dot and `\\\\` a backslash."""
    return list(_split_key(key))


@functools.lru_cache(maxsize=4096)
def _split_key(key: str) -> tuple[str, ...]:
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(key):
        c = key[i]
        if c == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            current.append(key[i + 1])
            i += 2
            continue
        if c == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return tuple(parts)


def lookup(event: dict[str, Any], key: str) -> tuple[bool, Any]:
    return _lookup_path(event, _split_key(key))


def _lookup_path(event: dict[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    value: Any = event
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str, word_boundary: bool) -> re.Pattern[str]:
    regex = "".join(".*?" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if word_boundary:
        return re.compile(f"(?:^|[^{_WORD}]){regex}(?:[^{_WORD}]|$)", re.IGNORECASE | re.DOTALL)
    return re.compile(f"^{regex}$", re.IGNORECASE | re.DOTALL)


def glob_matches(pattern: str, value: str, word_boundary: bool) -> bool:
    return _glob(pattern, word_boundary).search(value) is not None


def _is_simple(value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    return isinstance(value, int) and -(2**53) < value < 2**53


_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "==": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


@functools.lru_cache(maxsize=1024)
def _member_count_spec(spec: str) -> tuple[Callable[[int, int], bool], int] | None:
    m = re.fullmatch(r"\s*(==|<=|>=|<|>)?\s*([0-9]+)\s*", spec)
    if not m:
        return None
    return _COMPARE[m.group(1) or "=="], int(m.group(2))


def _member_count_matches(spec: str, count: int) -> bool:
    parsed = _member_count_spec(spec)
    return parsed is not None and parsed[0](count, parsed[1])


@functools.lru_cache(maxsize=4096)
def _display_name_pattern(name: str) -> re.Pattern[str]:
    return re.compile(f"(?:^|[^{_WORD}]){re.escape(name)}(?:[^{_WORD}]|$)", re.IGNORECASE)


def condition_matches(cond: Any, event: dict[str, Any], user_id: str, room: RoomContext) -> bool:
    if not isinstance(cond, dict):
        return False
    kind = cond.get("kind")
    if kind == "event_match":
        key, pattern = cond.get("key"), cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return False
        found, value = lookup(event, key)
        if not found or not isinstance(value, str):
            return False
        return glob_matches(pattern, value, word_boundary=key == "content.body")
    if kind == "event_property_is":
        key = cond.get("key")
        if not isinstance(key, str) or "value" not in cond:
            return False
        found, value = lookup(event, key)
        return found and _is_simple(value) and type(value) is type(cond["value"]) and value == cond["value"]
    if kind == "event_property_contains":
        key = cond.get("key")
        if not isinstance(key, str) or "value" not in cond:
            return False
        found, value = lookup(event, key)
        if not found or not isinstance(value, list):
            return False
        want = cond["value"]
        return any(_is_simple(v) and type(v) is type(want) and v == want for v in value)
    if kind == "contains_display_name":
        name = room.display_names.get(user_id)
        body = event.get("content", {}).get("body")
        if not name or not isinstance(body, str):
            return False
        return _display_name_pattern(name).search(body) is not None
    if kind == "room_member_count":
        spec = cond.get("is")
        return isinstance(spec, str) and _member_count_matches(spec, room.member_count)
    if kind == "sender_notification_permission":
        key = cond.get("key")
        if not isinstance(key, str):
            return False
        return room.user_power(str(event.get("sender"))) >= room.notification_level(key)
    if kind == THREAD_SUBSCRIPTION:
        want = cond.get("subscribed")
        return isinstance(want, bool) and _thread_subscription(want, user_id, room)
    # Unknown conditions never match.
    return False


# MSC4306's condition: the recipient is (`subscribed: true`) or is not subscribed to the
# event's thread; never true for an event outside threads (as Synapse).
THREAD_SUBSCRIPTION = "io.element.msc4306.thread_subscription"


def _thread_subscription(want: bool, user_id: str, room: RoomContext) -> bool:
    subscribers = room.thread_subscribers
    if subscribers is None:
        if room.thread_unknown:
            room.thread_wanted = True
        return False
    return (user_id in subscribers) is want


def _has_thread_condition(kind: str, rule: dict[str, Any]) -> bool:
    conditions = rule.get("conditions") if kind not in ("room", "sender", "content") else None
    return isinstance(conditions, list) and any(
        isinstance(c, dict) and c.get("kind") == THREAD_SUBSCRIPTION for c in conditions
    )


def rule_matches(
    kind: str, rule: dict[str, Any], event: dict[str, Any], user_id: str, room: RoomContext
) -> bool:
    if kind == "room":
        return bool(event.get("room_id") == rule["rule_id"])
    if kind == "sender":
        return bool(event.get("sender") == rule["rule_id"])
    if kind == "content":
        pattern = rule.get("pattern")
        body = event.get("content", {}).get("body")
        return isinstance(pattern, str) and isinstance(body, str) and glob_matches(pattern, body, True)
    return all(condition_matches(c, event, user_id, room) for c in rule.get("conditions", []))


def evaluate(
    ruleset: Ruleset,
    event: dict[str, Any],
    user_id: str,
    room: RoomContext,
    memo: dict[str, bool] | None = None,
) -> list[Any] | None:
    """The actions of the first enabled rule that matches, or None when nothing matches.

    `memo`, shared by the evaluations of one event in one room for its recipients, keeps
    the answers of rules that do not depend on the recipient (most of them), so each
    distinct rule is matched once per event."""
    content = event.get("content")
    has_mentions = isinstance(content, dict) and "m.mentions" in content
    compiled = ruleset.compiled
    if compiled is None:
        compiled = ruleset.compiled = CompiledRuleset(ruleset)
    in_thread = room.thread_subscribers is not None or room.thread_unknown
    for legacy, matches, actions, key in compiled.candidates(event.get("type"), in_thread):
        if has_mentions and legacy:
            continue
        if key is None or memo is None:
            hit = matches(event, user_id, room)
        else:
            found = memo.get(key)
            if found is None:
                found = memo[key] = matches(event, user_id, room)
            hit = found
        if hit:
            return list(actions)
    return None


# Compiled rules ---------------------------------------------------------------------------
# A matcher takes (event, user_id, room) and answers exactly as rule_matches would.

Matcher = Callable[[dict[str, Any], str, RoomContext], bool]
# (is a legacy mention rule, matcher, actions, memo key: None when the answer depends on
# the recipient)
CompiledRule = tuple[bool, Matcher, list[Any], str | None]

# Candidate lists are kept for at most this many event types per ruleset.
MAX_TYPES_PER_RULESET = 32


class CompiledRuleset:
    """The enabled rules in evaluation order, and per event type the rules that can match it.

    Most rules test the event type (`event_match` on `type`), which depends on nothing
    else: for each type seen, those tests are run once and rules that fail them are left
    out of that type's list. The remaining rules still run every condition. Rules with the
    thread subscription condition (MSC4306) cannot match an event outside threads: its
    lists leave them out."""

    __slots__ = ("_by_type", "_threaded", "_type_tests", "rules", "unthreaded")

    def __init__(self, ruleset: Ruleset) -> None:
        self.rules: list[CompiledRule] = []
        self._type_tests: list[list[re.Pattern[str]]] = []
        threaded: list[bool] = []
        for kind, rule in ruleset.ordered():
            if not rule.get("enabled", True):
                continue
            actions = rule.get("actions", [])
            self.rules.append(
                (
                    rule["rule_id"] in LEGACY_MENTION_RULES,
                    _compile_rule(kind, rule),
                    strip_actions(actions) if isinstance(actions, list) else [],
                    _memo_key(kind, rule),
                )
            )
            self._type_tests.append(_type_patterns(kind, rule))
            threaded.append(_has_thread_condition(kind, rule))
        self._threaded = threaded
        self.unthreaded = [r for r, t in zip(self.rules, threaded, strict=True) if not t]
        if len(self.unthreaded) == len(self.rules):
            self.unthreaded = self.rules
        # Per event type: the rules for events in a thread, and for the others.
        self._by_type: dict[str, tuple[list[CompiledRule], list[CompiledRule]]] = {}

    def candidates(self, event_type: Any, in_thread: bool = True) -> list[CompiledRule]:
        if not isinstance(event_type, str):
            return self.rules if in_thread else self.unthreaded
        found = self._by_type.get(event_type)
        if found is None:
            every: list[CompiledRule] = []
            outside: list[CompiledRule] = []
            for rule, tests, threaded in zip(self.rules, self._type_tests, self._threaded, strict=True):
                if all(t.search(event_type) is not None for t in tests):
                    every.append(rule)
                    if not threaded:
                        outside.append(rule)
            found = (every, outside if len(outside) < len(every) else every)
            if len(self._by_type) < MAX_TYPES_PER_RULESET:
                self._by_type[event_type] = found
        return found[0] if in_thread else found[1]


def _memo_key(kind: str, rule: dict[str, Any]) -> str | None:
    """What a rule's answer depends on besides the event and the room, as a string; None
    when it also depends on the recipient (display name mentions) or is not plain data."""
    if kind in ("room", "sender"):
        what: Any = rule["rule_id"]
    elif kind == "content":
        what = rule.get("pattern")
    else:
        what = rule.get("conditions", [])
        if not isinstance(what, list) or any(
            isinstance(c, dict) and c.get("kind") in ("contains_display_name", THREAD_SUBSCRIPTION)
            for c in what
        ):
            return None
    try:
        return kind + orjson.dumps(what, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return None


def compile_ruleset(ruleset: Ruleset) -> list[CompiledRule]:
    """The enabled rules in evaluation order."""
    return CompiledRuleset(ruleset).rules


def _type_patterns(kind: str, rule: dict[str, Any]) -> list[re.Pattern[str]]:
    """The patterns an event's type must match for the rule to match (from its conditions)."""
    if kind not in ("override", "underride"):
        return []
    conditions = rule.get("conditions", [])
    if not isinstance(conditions, list):
        return []
    out = []
    for cond in conditions:
        if isinstance(cond, dict) and cond.get("kind") == "event_match" and cond.get("key") == "type":
            pattern = cond.get("pattern")
            if isinstance(pattern, str):
                out.append(_glob(pattern, False))
    return out


def _never(event: dict[str, Any], user_id: str, room: RoomContext) -> bool:
    return False


def _always(event: dict[str, Any], user_id: str, room: RoomContext) -> bool:
    return True


def _compile_rule(kind: str, rule: dict[str, Any]) -> Matcher:
    if kind in ("room", "sender"):
        field_name = "room_id" if kind == "room" else "sender"
        wanted = rule["rule_id"]

        def same(event: dict[str, Any], user_id: str, room: RoomContext) -> bool:
            return bool(event.get(field_name) == wanted)

        return same
    if kind == "content":
        pattern = rule.get("pattern")
        if not isinstance(pattern, str):
            return _never
        regex = _glob(pattern, True)

        def body_matches(event: dict[str, Any], user_id: str, room: RoomContext) -> bool:
            body = event.get("content", {}).get("body")
            return isinstance(body, str) and regex.search(body) is not None

        return body_matches
    conditions = rule.get("conditions", [])
    if not isinstance(conditions, list):
        # Whatever the interpreter makes of it.
        return lambda event, user_id, room: rule_matches(kind, rule, event, user_id, room)
    matchers = [_compile_condition(c) for c in conditions]
    if not matchers:
        return _always
    if len(matchers) == 1:
        return matchers[0]

    def every(event: dict[str, Any], user_id: str, room: RoomContext) -> bool:
        for m in matchers:
            if not m(event, user_id, room):
                return False
        return True

    return every


def _compile_condition(cond: Any) -> Matcher:
    if not isinstance(cond, dict):
        return _never
    kind = cond.get("kind")
    if kind == "event_match":
        key, pattern = cond.get("key"), cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return _never
        path = _split_key(key)
        regex = _glob(pattern, key == "content.body")

        def event_match(event: dict[str, Any], user_id: str, room: RoomContext) -> bool:
            found, value = _lookup_path(event, path)
            return found and isinstance(value, str) and regex.search(value) is not None

        return event_match
    if kind in ("event_property_is", "event_property_contains"):
        key = cond.get("key")
        if not isinstance(key, str) or "value" not in cond:
            return _never
        path = _split_key(key)
        want = cond["value"]
        want_type = type(want)
        if kind == "event_property_is":

            def property_is(event: dict[str, Any], user_id: str, room: RoomContext) -> bool:
                found, value = _lookup_path(event, path)
                return found and _is_simple(value) and type(value) is want_type and value == want

            return property_is

        def property_contains(event: dict[str, Any], user_id: str, room: RoomContext) -> bool:
            found, value = _lookup_path(event, path)
            if not found or not isinstance(value, list):
                return False
            return any(_is_simple(v) and type(v) is want_type and v == want for v in value)

        return property_contains
    if kind == "room_member_count":
        spec = cond.get("is")
        parsed = _member_count_spec(spec) if isinstance(spec, str) else None
        if parsed is None:
            return _never
        compare, n = parsed

        def member_count(event: dict[str, Any], user_id: str, room: RoomContext) -> bool:
            return compare(room.member_count, n)

        return member_count
    if kind in ("contains_display_name", "sender_notification_permission"):
        # Depend on the room and the recipient: interpreted each time.
        return lambda event, user_id, room: condition_matches(cond, event, user_id, room)
    if kind == THREAD_SUBSCRIPTION:
        want = cond.get("subscribed")
        if not isinstance(want, bool):
            return _never

        def thread_subscription(event: dict[str, Any], user_id: str, room: RoomContext) -> bool:
            # _thread_subscription, inlined: it runs for each recipient of a thread event.
            subscribers = room.thread_subscribers
            if subscribers is None:
                if room.thread_unknown:
                    room.thread_wanted = True
                return False
            return (user_id in subscribers) is want

        return thread_subscription
    # Unknown conditions never match.
    return _never


def is_notify(actions: list[Any] | None) -> bool:
    return bool(actions) and "notify" in (actions or [])


def is_highlight(actions: list[Any] | None) -> bool:
    for a in actions or []:
        if isinstance(a, dict) and a.get("set_tweak") == "highlight":
            return a.get("value", True) is True
    return False
