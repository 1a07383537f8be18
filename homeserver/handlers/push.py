"""Push: rule management, evaluating every new event for each local recipient, unread
counts per room and thread, /notifications and pushers.

Local messages are evaluated before their group commit and their rows written in the
same transaction (`prepare_messages`, a batch hook of the event creator); every other
event is evaluated by a listener after it is persisted. Each recipient's notifying
actions become one `event_push_actions` row; unread counts are those rows
past the user's newest read receipt (unthreaded receipts cover every thread,
threaded ones their own). Rulesets and per-room context (members, display names,
power levels) are cached in bounded LRUs, invalidated by rule changes and by state
events in the room.

Delivery to push gateways lives in homeserver.handlers.pusher_delivery; email notifications
(pushers of kind "email") in homeserver.handlers.email_notifs.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError, bad_json, not_found
from homeserver.events import Event
from homeserver.handlers.client_format import client_event
from homeserver.handlers.push_eval import RoomContext, evaluate, is_highlight, is_notify
from homeserver.handlers.push_rules import (
    KINDS,
    POSTCONTENT,
    Ruleset,
    build_ruleset,
    is_default_rule_id,
    strip_actions,
)
from homeserver.invalidation import InvalidatedCache, Invalidations
from homeserver.storage.email_notifs import EmailNotifStore
from homeserver.storage.events import EventStore
from homeserver.storage.push import (
    PushAction,
    PushActionStore,
    Pusher,
    PusherStore,
    PushRuleStore,
    RuleNotFound,
)
from homeserver.storage.relations import RelationsStore
from homeserver.storage.thread_subscriptions import ThreadSubscriptionStore
from homeserver.storage.threepids import ThreepidStore, email_key
from homeserver.storage.unread import Counts
from homeserver.sync.notifier import Notifier

log = logging.getLogger(__name__)

MAX_CACHED_RULESETS = 10_000
MAX_CACHED_ROOMS = 2_000
# Invalidation topics (lists of user IDs, of room IDs) for the other workers' caches.
RULES_TOPIC = "push.rules"
ROOMS_TOPIC = "push.rooms"
# Following relations to find an event's thread stops after this many hops (the spec suggests 3).
THREAD_HOPS = 3
MAIN_THREAD = "main"


def _valid_actions(actions: Any) -> list[Any]:
    if not isinstance(actions, list):
        raise bad_json("actions must be a list")
    for a in actions:
        if isinstance(a, str):
            if a not in ("notify", "dont_notify", "coalesce"):
                raise MatrixError(400, Codes.INVALID_PARAM, f"Unknown action {a}")
        elif not (isinstance(a, dict) and isinstance(a.get("set_tweak"), str)):
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid action")
    return strip_actions(actions)


# A recipient's notification: (user_id, thread_id, highlight, actions).
_Notify = tuple[str, str, bool, list[Any]]


def _action(event: Event, stream_id: int, n: _Notify) -> PushAction:
    user_id, thread_id, highlight, actions = n
    return PushAction(
        user_id,
        event.event_id,
        event.room_id,
        thread_id,
        stream_id,
        highlight,
        actions,
        event.origin_server_ts,
    )


class _PushWork:
    """A batch's push actions: written in its transaction, announced after the commit."""

    __slots__ = ("events", "handler", "per_event", "recorded")

    def __init__(self, handler: PushHandler, events: list[Event], per_event: list[list[_Notify]]) -> None:
        self.handler = handler
        self.events = events
        self.per_event = per_event
        self.recorded: list[list[PushAction]] = []

    async def write(self, conn: AsyncConnection, stream_ids: list[int]) -> None:
        self.recorded = []
        for event, stream_id, notifies in zip(self.events, stream_ids, self.per_event, strict=True):
            if notifies:
                event_id, room_id, ts = event.event_id, event.room_id, event.origin_server_ts
                self.recorded.append(
                    [PushAction(u, event_id, room_id, t, stream_id, h, a, ts) for u, t, h, a in notifies]
                )
        await self.handler.actions.add_in(conn, [a for actions in self.recorded for a in actions])

    def committed(self) -> None:
        # No wake here: the notified users are the room's joined members, and the room's
        # notify (after the senders are answered, see EventCreator._drain) wakes them.
        self.handler.actions.recorded(self.recorded)


class PushHandler:
    def __init__(
        self,
        events: EventStore,
        relations: RelationsStore,
        rules: PushRuleStore,
        actions: PushActionStore,
        pushers: PusherStore,
        notifier: Notifier,
        clock: Clock,
        server_name: str,
        invalidations: Invalidations | None = None,
        threepids: ThreepidStore | None = None,
        email_notifs: EmailNotifStore | None = None,
    ) -> None:
        self.events = events
        # Email pushers: their address must be one of the user's; they start from now.
        self.threepids = threepids
        self.email_notifs = email_notifs
        self.relations = relations
        self.rules = rules
        self.actions = actions
        self.pushers = pushers
        self.notifier = notifier
        self.clock = clock
        self.server_name = server_name
        # Thread subscriptions (MSC4306), when on (set by homeserver.api.thread_subscriptions):
        # the default `postcontent` rules and their condition.
        self.thread_subscriptions: ThreadSubscriptionStore | None = None
        self._rulesets: InvalidatedCache[str, Ruleset] = InvalidatedCache(MAX_CACHED_RULESETS)
        self._rooms: InvalidatedCache[str, RoomContext] = InvalidatedCache(MAX_CACHED_ROOMS)
        # Rules and room state change on other workers too.
        self._peers = invalidations or Invalidations()
        self._peers.subscribe(RULES_TOPIC, self._rulesets.drop)
        self._peers.subscribe(ROOMS_TOPIC, self._rooms.drop)
        self._peers.on_reset(self._drop_all)

    def _drop_all(self) -> None:
        self._rulesets.clear()
        self._rooms.clear()

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self.server_name)

    # Rulesets ----------------------------------------------------------------------------

    async def ruleset(self, user_id: str) -> Ruleset:
        cached = self._rulesets.get(user_id)
        if cached is not None:
            return cached
        generation = self._rulesets.generation
        user_rules, overrides = await self.rules.get_rules(user_id)
        ruleset = build_ruleset(user_id, user_rules, overrides, self.thread_subscriptions is not None)
        self._rulesets.put(user_id, ruleset, generation)
        return ruleset

    async def ruleset_json(self, user_id: str) -> dict[str, Any]:
        return (await self.ruleset(user_id)).to_json()

    async def rules_changed_since(self, user_id: str, since: int) -> bool:
        return await self.rules.stream_position(user_id) > since

    async def count_changes_since(self, user_id: str, since: int, upto: int) -> set[str]:
        return await self.actions.rooms_changed_since(user_id, since, upto)

    def _changed(self, user_id: str) -> None:
        self._rulesets.drop([user_id])
        self._peers.broadcast(RULES_TOPIC, [user_id])
        # Clients learn about rule changes through m.push_rules account data in /sync.
        self.notifier.notify(users=[user_id])

    def _known_kind(self, kind: str) -> bool:
        return kind in KINDS or (kind == POSTCONTENT and self.thread_subscriptions is not None)

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> dict[str, Any]:
        if not self._known_kind(kind):
            raise MatrixError(400, Codes.INVALID_PARAM, "Unknown rule kind")
        rule = (await self.ruleset(user_id)).find(kind, rule_id)
        if rule is None:
            raise not_found("Unknown push rule")
        return rule

    async def put_rule(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        body: dict[str, Any],
        before: str | None,
        after: str | None,
    ) -> None:
        if kind == POSTCONTENT and self.thread_subscriptions is not None:
            # MSC4306: clients cannot make their own postcontent rules (yet).
            raise MatrixError(
                400, Codes.INVALID_PARAM, "user-defined rules using `postcontent` are not accepted"
            )
        if kind not in KINDS:
            raise MatrixError(400, Codes.INVALID_PARAM, "Unknown rule kind")
        if is_default_rule_id(rule_id):
            raise MatrixError(
                400, Codes.INVALID_PARAM, "Rule IDs starting with '.' are reserved for the server"
            )
        if not rule_id or "/" in rule_id or "\\" in rule_id or len(rule_id) > 255:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid rule ID")
        if before is not None and after is not None:
            raise MatrixError(400, Codes.INVALID_PARAM, "Give before or after, not both")
        for anchor in (before, after):
            if anchor is not None and is_default_rule_id(anchor):
                raise MatrixError(
                    400, Codes.INVALID_PARAM, "Cannot position a rule relative to a server rule"
                )
        rule: dict[str, Any] = {"actions": _valid_actions(body.get("actions"))}
        if kind in ("override", "underride"):
            conditions = body.get("conditions", [])
            if not isinstance(conditions, list) or not all(isinstance(c, dict) for c in conditions):
                raise bad_json("conditions must be a list of objects")
            rule["conditions"] = conditions
        elif kind == "content":
            pattern = body.get("pattern")
            if not isinstance(pattern, str) or not pattern:
                raise MatrixError(400, Codes.MISSING_PARAM, "Content rules need a pattern")
            rule["pattern"] = pattern
        try:
            await self.rules.put_rule(user_id, kind, rule_id, rule, before, after)
        except RuleNotFound:
            raise not_found("The before/after rule does not exist") from None
        self._changed(user_id)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        if not self._known_kind(kind):
            raise MatrixError(400, Codes.INVALID_PARAM, "Unknown rule kind")
        try:
            await self.rules.delete_rule(user_id, kind, rule_id)
        except RuleNotFound:
            raise not_found("Unknown push rule") from None
        self._changed(user_id)

    async def set_rule_field(
        self, user_id: str, kind: str, rule_id: str, *, enabled: bool | None = None, actions: Any = None
    ) -> None:
        await self.get_rule(user_id, kind, rule_id)
        valid = _valid_actions(actions) if actions is not None else None
        if is_default_rule_id(rule_id):
            await self.rules.set_override(user_id, rule_id, enabled=enabled, actions=valid)
        else:
            try:
                await self.rules.set_user_rule_field(user_id, kind, rule_id, enabled=enabled, actions=valid)
            except RuleNotFound:
                raise not_found("Unknown push rule") from None
        self._changed(user_id)

    # Evaluation --------------------------------------------------------------------------

    async def _room_context(self, room_id: str) -> RoomContext | None:
        cached = self._rooms.get(room_id)
        if cached is not None:
            return cached
        generation = self._rooms.generation
        rv = await self.events.get_room_version(room_id)
        if rv is None:
            return None
        state = await self.events.get_current_state(
            room_id, types=["m.room.member", "m.room.power_levels", "m.room.create"]
        )
        names: dict[str, str] = {}
        joined = 0
        power: dict[str, Any] = {}
        creators: set[str] = set()
        for (type_, key), stored in state.items():
            content = stored.event.content
            if type_ == "m.room.member" and content.get("membership") == "join":
                joined += 1
                name = content.get("displayname")
                names[key] = name if isinstance(name, str) else ""
            elif type_ == "m.room.power_levels":
                power = content
            elif type_ == "m.room.create" and rv.privileged_creators:
                creators.add(stored.event.sender)
                extra = content.get("additional_creators")
                if isinstance(extra, list):
                    creators.update(c for c in extra if isinstance(c, str))
        ctx = RoomContext(joined, names, power, frozenset(creators))
        self._rooms.put(room_id, ctx, generation)
        return ctx

    async def thread_id_for(self, event: Event) -> str:
        # Relations of a message can only name committed events: a batch's own event IDs
        # are not known to any client before it commits.
        rel = event.content.get("m.relates_to")
        if not isinstance(rel, dict):
            return MAIN_THREAD
        target = rel.get("event_id")
        if rel.get("rel_type") == "m.thread" and isinstance(target, str):
            return target
        # Reactions and edits of a thread event belong to that thread; plain replies do not.
        for _ in range(THREAD_HOPS):
            if not isinstance(target, str):
                break
            found = await self.relations.relation_of(target)
            if found is None:
                break
            rel_type, relates_to = found
            if rel_type == "m.thread" and relates_to is not None:
                return relates_to
            if rel_type in (None, "m.in_reply_to"):
                break
            target = relates_to
        return MAIN_THREAD

    async def on_event(self, event: Event, stream_id: int) -> None:
        """Listener: evaluate a newly persisted event for every local user it may notify."""
        try:
            await self._on_event(event, stream_id)
        except Exception:
            # Push is best effort; it must never fail the send that triggered it.
            log.exception("push evaluation failed for %s", event.event_id)

    async def _on_event(self, event: Event, stream_id: int) -> None:
        if event.is_state():
            self._rooms.drop([event.room_id])
            self._peers.broadcast(ROOMS_TOPIC, [event.room_id])
        ctx = await self._room_context(event.room_id)
        if ctx is None:
            return
        batch = [_action(event, stream_id, n) for n in await self._evaluate(event, ctx)]
        if batch:
            await self.actions.add(batch)
            self.notifier.notify(users=[a.user_id for a in batch])

    async def prepare_messages(self, events: list[Event]) -> _PushWork | None:
        """Batch hook: evaluate a batch of new local messages (one room, not yet
        committed) so their push actions are written in the batch's transaction."""
        try:
            ctx = await self._room_context(events[0].room_id)
            if ctx is None:
                return None
            # A batch's replies to one thread read its subscribers once.
            threads: dict[tuple[str, str], frozenset[str]] = {}
            per_event = [await self._evaluate(e, ctx, threads) for e in events]
        except Exception:
            log.exception("push evaluation failed for %d events", len(events))
            return None
        if not any(per_event):
            return None
        return _PushWork(self, events, per_event)

    async def _evaluate(
        self, event: Event, ctx: RoomContext, threads: dict[tuple[str, str], frozenset[str]] | None = None
    ) -> list[_Notify]:
        """(user, thread, highlight, actions) for every local user the event notifies.
        `threads`: thread subscribers already read for this batch."""
        local = ctx.local_members
        if local is None:
            local = ctx.local_members = [u for u in ctx.display_names if self.is_local(u)]
        recipients = [u for u in local if u != event.sender]
        if (
            event.type == "m.room.member"
            and event.membership == "invite"
            and event.state_key
            and self.is_local(event.state_key)
            and event.state_key != event.sender
            and event.state_key not in recipients
        ):
            recipients.append(event.state_key)
        if not recipients:
            return []
        flat = {
            "type": event.type,
            "sender": event.sender,
            "room_id": event.room_id,
            "event_id": event.event_id,
            "content": event.content,
        }
        if event.state_key is not None:
            flat["state_key"] = event.state_key
        thread_id: str | None = None
        out: list[_Notify] = []
        memo: dict[str, bool] = {}
        rulesets = self._rulesets
        # Thread subscriptions: nothing more for an event without a relation. A thread reply
        # reads its thread's subscribers once; any other relation looks its thread up only if
        # some recipient's rules get to ask (see RoomContext.thread_unknown).
        asked: list[str] = []
        unknown = False
        if self.thread_subscriptions is not None:
            rel = event.content.get("m.relates_to")
            if isinstance(rel, dict) and isinstance(rel.get("rel_type"), str):
                target = rel.get("event_id")
                if rel["rel_type"] == "m.thread" and isinstance(target, str):
                    thread_id = target
                    ctx = replace(
                        ctx, thread_subscribers=await self._subscribers(event.room_id, target, threads)
                    )
                else:
                    ctx = replace(ctx, thread_unknown=True)
                    unknown = True
        for user_id in recipients:
            ruleset = rulesets.get(user_id) or await self.ruleset(user_id)
            actions = evaluate(ruleset, flat, user_id, ctx, memo)
            if unknown and ctx.thread_wanted:
                ctx.thread_wanted = False
                asked.append(user_id)
                continue
            if not is_notify(actions):
                continue
            if thread_id is None:
                thread_id = await self.thread_id_for(event)
            assert actions is not None
            out.append((user_id, thread_id, is_highlight(actions), actions))
        if asked:
            if thread_id is None:
                thread_id = await self.thread_id_for(event)
            subscribers = (
                None
                if thread_id == MAIN_THREAD
                else await self._subscribers(event.room_id, thread_id, threads)
            )
            ctx = replace(ctx, thread_subscribers=subscribers, thread_unknown=False)
            for user_id in asked:
                actions = evaluate(
                    rulesets.get(user_id) or await self.ruleset(user_id), flat, user_id, ctx, memo
                )
                if is_notify(actions):
                    assert actions is not None
                    out.append((user_id, thread_id, is_highlight(actions), actions))
        return out

    async def _subscribers(
        self, room_id: str, thread_id: str, threads: dict[tuple[str, str], frozenset[str]] | None
    ) -> frozenset[str]:
        assert self.thread_subscriptions is not None
        if threads is not None and (room_id, thread_id) in threads:
            return threads[(room_id, thread_id)]
        found = await self.thread_subscriptions.subscribers(room_id, thread_id)
        if threads is not None:
            threads[(room_id, thread_id)] = found
        return found

    # Counts and notifications ------------------------------------------------------------

    async def unread_counts(self, user_id: str, room_ids: list[str]) -> dict[str, dict[str, Counts]]:
        return await self.actions.unread_counts(user_id, room_ids)

    async def notifications(
        self, user_id: str, from_token: str | None, limit: int, only: str | None
    ) -> dict[str, Any]:
        before: int | None = None
        if from_token:
            try:
                before = int(from_token)
            except ValueError:
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid from token") from None
        limit = max(1, min(limit, 100))
        rows = await self.actions.notifications(user_id, before, limit, only == "highlight")
        stored = await self.events.get_events([r.event_id for r in rows])
        positions = await self.actions.read_positions(user_id, {r.room_id for r in rows})
        now = self.clock.time_ms()
        chunk = []
        for r in rows:
            s = stored.get(r.event_id)
            if s is None:
                continue
            read_upto = max(positions.get((r.room_id, ""), 0), positions.get((r.room_id, r.thread_id), 0))
            chunk.append(
                {
                    "actions": r.actions,
                    "event": client_event(s, now),
                    "profile_tag": None,
                    "read": r.event_stream <= read_upto,
                    "room_id": r.room_id,
                    "ts": r.ts,
                }
            )
        out: dict[str, Any] = {"notifications": chunk}
        if len(rows) == limit:
            out["next_token"] = str(rows[-1].event_stream)
        return out

    # Pushers -----------------------------------------------------------------------------

    async def set_pusher(self, user_id: str, device_id: str | None, body: dict[str, Any]) -> None:
        """`device_id`: the device whose deletion removes the pusher (None: no device)."""
        app_id, pushkey = body.get("app_id"), body.get("pushkey")
        if not isinstance(app_id, str) or not app_id or not isinstance(pushkey, str) or not pushkey:
            raise MatrixError(400, Codes.MISSING_PARAM, "app_id and pushkey are required")
        if len(app_id) > 64 or len(pushkey) > 512:
            raise MatrixError(400, Codes.INVALID_PARAM, "app_id or pushkey too long")
        kind = body.get("kind")
        if kind is None:
            await self.pushers.delete(user_id, app_id, pushkey)
            return
        if kind not in ("http", "email"):
            raise MatrixError(400, Codes.INVALID_PARAM, "Unsupported pusher kind")
        fields = {}
        for key in ("app_display_name", "device_display_name", "lang"):
            value = body.get(key)
            if not isinstance(value, str):
                raise MatrixError(400, Codes.MISSING_PARAM, f"{key} is required")
            fields[key] = value
        data = body.get("data")
        if not isinstance(data, dict):
            raise MatrixError(400, Codes.MISSING_PARAM, "data is required")
        if kind == "http":
            url = data.get("url")
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                raise MatrixError(400, Codes.INVALID_PARAM, "data.url must be an http(s) URL")
        elif self.threepids is not None:
            # As Synapse: the address must be validated on this account.
            owner = await self.threepids.user_for("email", email_key(pushkey))
            if owner != user_id:
                raise MatrixError(400, Codes.THREEPID_NOT_FOUND, "Email not found")
        profile_tag = body.get("profile_tag")
        pusher = Pusher(
            user_id=user_id,
            app_id=app_id,
            pushkey=pushkey,
            kind=kind,
            app_display_name=fields["app_display_name"],
            device_display_name=fields["device_display_name"],
            profile_tag=profile_tag if isinstance(profile_tag, str) else None,
            lang=fields["lang"],
            data=data,
            device_id=device_id,
        )
        if kind == "email" and self.email_notifs is not None:
            await self.email_notifs.start_now(user_id)
        await self.pushers.set(pusher, bool(body.get("append", False)), self.clock.time_ms())

    async def get_pushers(self, user_id: str) -> list[dict[str, Any]]:
        return [p.to_json() for p in await self.pushers.for_user(user_id)]

    async def remove_email_pushers(self, user_id: str, address: str) -> None:
        """The address left the account: its email pushers go too (as in Synapse)."""
        for pusher in await self.pushers.for_user(user_id):
            if pusher.kind == "email" and email_key(pusher.pushkey) == email_key(address):
                await self.pushers.delete(user_id, pusher.app_id, pusher.pushkey)
