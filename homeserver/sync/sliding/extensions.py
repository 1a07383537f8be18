"""Sliding sync extensions: to-device messages, end-to-end encryption data, account data,
read receipts and typing, in the shape Synapse and the clients use.

Each is asked for with `{"enabled": true}` and stays on for the connection until a request
sets `enabled: false`. An extension newly turned on starts from the beginning (all account
data, the current typists, the latest receipts) for the rooms it covers. Receipts, typing
and room account data cover the rooms of the request's lists and subscriptions, or those of
the extension's own `lists` and `rooms` when given. Sticky events (MSC4480) are in
sticky.py, thread subscriptions (MSC4308) in thread_subscriptions.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from homeserver.handlers.auth import Requester
from homeserver.handlers.device_lists import DeviceListHandler
from homeserver.handlers.e2e_keys import E2EKeysHandler
from homeserver.handlers.ephemeral import ReceiptHandler, TypingHandler, receipts_to_edu_content
from homeserver.handlers.to_device import ToDeviceHandler
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.sync_reads import Membership, UserProbe, WindowSummary
from homeserver.sync.cs_extension import PushRulesSource
from homeserver.sync.shared import device_lists_may_have_changed
from homeserver.sync.sliding import sticky
from homeserver.sync.sliding import thread_subscriptions as thread_subs
from homeserver.sync.sliding.sticky import StickyExtension, StickyInput
from homeserver.sync.sliding.thread_subscriptions import ThreadSubscriptionsExtension

NAMES = ("to_device", "e2ee", "account_data", "receipts", "typing", sticky.NAME, thread_subs.NAME)
TO_DEVICE_LIMIT = 100


@dataclass(slots=True)
class ExtensionInput:
    requester: Requester
    # Extensions on for this request, and those already on at the previous position.
    enabled: frozenset[str]
    was_enabled: frozenset[str]
    config: dict[str, dict[str, Any]]
    since: int | None
    ephemeral_since: int | None
    upto: int
    # Rooms by list name, the subscribed rooms, and the user's joined rooms.
    list_rooms: dict[str, list[str]]
    subscribed: list[str]
    joined: list[str]
    # Rooms sent whole in this response (their room-scoped data starts afresh).
    initial_rooms: set[str]
    # After the first request: what changed for the user and device since the previous
    # position, the user's memberships, and what landed anywhere in the window (None when
    # the window was long). The reads they show would find nothing are skipped.
    probe: UserProbe | None = None
    memberships: list[Membership] = field(default_factory=list)
    window: WindowSummary | None = None
    # Sticky events: the position of the user's join of each joined room, the rooms any
    # list's filters let through (in its ranges or not), the position the connection's
    # previous response reached, and the rooms of this response.
    joined_at: dict[str, tuple[int, str]] = field(default_factory=dict)
    matched: set[str] = field(default_factory=set)
    sticky_stored: int | None = None
    rooms_out: dict[str, Any] = field(default_factory=dict)
    # Thread subscriptions: the limit in force (None: the extension is off).
    thread_limit: int | None = None


def enabled_extensions(
    config: dict[str, dict[str, Any]], before: frozenset[str], names: tuple[str, ...] = NAMES
) -> frozenset[str]:
    """Extensions on after this request: sticky until turned off. `names`: those this server
    offers (one asked for while its feature is off does not count as on: once the feature
    is on, the connection gets it from the beginning)."""
    on = set(before)
    for name in names:
        flag = config.get(name, {}).get("enabled")
        if flag is True:
            on.add(name)
        elif flag is False:
            on.discard(name)
    return frozenset(on)


class SlidingExtensions:
    def __init__(
        self,
        to_device: ToDeviceHandler,
        keys: E2EKeysHandler,
        device_lists: DeviceListHandler,
        account_data: AccountDataStore,
        receipts: ReceiptHandler,
        typing: TypingHandler,
        rules: PushRulesSource,
        sticky_events: StickyExtension | None = None,
    ) -> None:
        self.to_device = to_device
        self.keys = keys
        self.device_lists = device_lists
        self.account_data = account_data
        self.receipts = receipts
        self.typing = typing
        self.rules = rules
        # None: sticky events are off on this server.
        self.sticky_events = sticky_events
        # None: thread subscriptions are off (set by homeserver.api.thread_subscriptions).
        self.thread_subscriptions: ThreadSubscriptionsExtension | None = None

    def offered(self) -> tuple[str, ...]:
        """The extensions this server offers (those of features turned off are not)."""
        off = {sticky.NAME} if self.sticky_events is None else set()
        if self.thread_subscriptions is None:
            off.add(thread_subs.NAME)
        return tuple(n for n in NAMES if n not in off)

    async def compute(self, inp: ExtensionInput) -> tuple[dict[str, Any], bool, int | None]:
        """The `extensions` section, whether it holds anything new, and the position the
        sticky events extension reached (None: off)."""
        out: dict[str, Any] = {}
        news = False
        sticky_reached = None
        if sticky.NAME in inp.enabled and self.sticky_events is not None:
            out[sticky.NAME], sticky_reached = await self.sticky_events.compute(self._sticky_input(inp))
            news |= bool(out[sticky.NAME]["rooms"])
        if inp.thread_limit is not None and self.thread_subscriptions is not None:
            # Changes since the previous response, or all when the extension is newly on.
            after = inp.since if inp.since is not None and thread_subs.NAME in inp.was_enabled else 0
            found = await self.thread_subscriptions.compute(
                inp.requester.user_id, after, inp.upto, inp.thread_limit
            )
            if found is not None:
                out[thread_subs.NAME] = found  # only when there is something, as Synapse
                news = True
        if "to_device" in inp.enabled:
            out["to_device"] = await self._to_device(inp)
            news |= bool(out["to_device"]["events"])
        if "e2ee" in inp.enabled:
            out["e2ee"] = await self._e2ee(inp)
            lists = out["e2ee"].get("device_lists", {})
            news |= bool(lists.get("changed") or lists.get("left"))
        if "account_data" in inp.enabled:
            out["account_data"] = await self._account_data(inp)
            news |= bool(out["account_data"]["global"] or out["account_data"]["rooms"])
        if "receipts" in inp.enabled:
            out["receipts"] = {"rooms": await self._receipts(inp)}
            news |= bool(out["receipts"]["rooms"])
        if "typing" in inp.enabled:
            out["typing"] = {"rooms": self._typing(inp)}
            news |= bool(out["typing"]["rooms"])
        return out, news, sticky_reached

    def _sticky_input(self, inp: ExtensionInput) -> StickyInput:
        """The joined rooms of the lists (all they match: Synapse's "interested" rooms) and
        the subscriptions."""
        wanted = inp.matched.union(inp.subscribed)
        scope = {r: at for r, at in inp.joined_at.items() if r in wanted}
        was_on = sticky.NAME in inp.was_enabled
        return StickyInput(
            inp.requester.device_id,
            sticky.parse_config(inp.config.get(sticky.NAME)),
            inp.sticky_stored if was_on else None,
            inp.upto,
            scope,
            inp.since if was_on else None,
            inp.initial_rooms,
            inp.since,
            inp.window.sticky_rooms if inp.window is not None else None,
            inp.rooms_out,
        )

    async def _to_device(self, inp: ExtensionInput) -> dict[str, Any]:
        """Messages after the `since` the client names (its last `next_batch`); naming it
        confirms, and deletes, what came before."""
        config = inp.config.get("to_device", {})
        raw_since = config.get("since")
        since = int(raw_since) if isinstance(raw_since, str) and raw_since.isdigit() else None
        limit = config.get("limit", TO_DEVICE_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            limit = TO_DEVICE_LIMIT
        requester = inp.requester
        probe = inp.probe
        if requester.device_id is None or (
            probe is not None and (probe.inbox_min is None or probe.inbox_min > inp.upto)
        ):
            # The device's inbox holds nothing at or below upto: nothing to deliver or confirm.
            return {"next_batch": str(inp.upto), "events": []}
        batch = await self.to_device.sync_batch(
            requester.user_id, requester.device_id, since, inp.upto, min(limit, TO_DEVICE_LIMIT)
        )
        next_batch = batch.last_stream_id if batch.limited else inp.upto
        return {"next_batch": str(next_batch), "events": batch.messages}

    async def _e2ee(self, inp: ExtensionInput) -> dict[str, Any]:
        requester = inp.requester
        counts: dict[str, int] = {"signed_curve25519": 0}
        fallback: list[str] = []
        if inp.probe is not None:
            counts.update(inp.probe.one_time_keys)
            fallback = list(inp.probe.fallback_keys)
        elif requester.device_id is not None:
            found, fallback = await self.keys.key_counts(requester.user_id, requester.device_id)
            counts.update(found)
        out: dict[str, Any] = {
            "device_one_time_keys_count": counts,
            "device_unused_fallback_key_types": fallback,
        }
        if inp.since is not None and "e2ee" in inp.was_enabled:
            changed: list[str] = []
            left: list[str] = []
            # (False: nothing could have changed; None: the window was long, so ask.)
            if (
                device_lists_may_have_changed(inp.memberships, inp.window, inp.since, inp.upto, inp.joined)
                is not False
            ):
                changed, left = await self.device_lists.get_changes(
                    requester.user_id, inp.since, inp.upto, inp.joined
                )
            out["device_lists"] = {"changed": changed, "left": left}
        return out

    def _rooms_for(self, inp: ExtensionInput, name: str) -> list[str]:
        config = inp.config.get(name, {})
        lists = config.get("lists")
        rooms = config.get("rooms")
        chosen: dict[str, None] = {}
        for list_name, room_ids in inp.list_rooms.items():
            if not isinstance(lists, list) or "*" in lists or list_name in lists:
                chosen.update(dict.fromkeys(room_ids))
        for room_id in inp.subscribed:
            if not isinstance(rooms, list) or "*" in rooms or room_id in rooms:
                chosen[room_id] = None
        return list(chosen)

    def _fresh(self, inp: ExtensionInput, name: str) -> bool:
        return inp.since is None or name not in inp.was_enabled

    async def _account_data(self, inp: ExtensionInput) -> dict[str, Any]:
        user_id = inp.requester.user_id
        fresh = self._fresh(inp, "account_data")
        probe = None if fresh else inp.probe
        glob: dict[str, Any] = {}
        by_room: dict[str, dict[str, Any]] = {}
        if probe is None or probe.account_data is not None:
            glob, by_room = await self.account_data.get_since(user_id, None if fresh else inp.since, inp.upto)
        if probe is not None:
            rules_changed = (probe.push_rules or 0) > (inp.since or 0)
        else:
            rules_changed = fresh or await self.rules.rules_changed_since(user_id, inp.since or 0)
        if rules_changed:
            # Push rules are account data to clients, kept apart here (as in /sync v3).
            glob = {**glob, "m.push_rules": await self.rules.ruleset_json(user_id)}
        rooms = self._rooms_for(inp, "account_data")
        out_rooms: dict[str, list[dict[str, Any]]] = {}
        for room_id in rooms:
            data = by_room.get(room_id, {})
            if not fresh and room_id in inp.initial_rooms:
                data = await self.account_data.for_room(user_id, room_id)
            if data:
                out_rooms[room_id] = [{"type": t, "content": c} for t, c in data.items()]
        return {"global": [{"type": t, "content": c} for t, c in glob.items()], "rooms": out_rooms}

    async def _receipts(self, inp: ExtensionInput) -> dict[str, Any]:
        rooms = self._rooms_for(inp, "receipts")
        if not rooms:
            return {}
        fresh = self._fresh(inp, "receipts")
        whole = rooms if fresh else [r for r in rooms if r in inp.initial_rooms]
        rest = [] if fresh else [r for r in rooms if r not in inp.initial_rooms]
        if inp.window is not None:
            rest = [r for r in rest if r in inp.window.receipt_rooms]
        found = []
        if whole:
            found += await self.receipts.store.get_since(whole, None, inp.upto)
        if rest:
            found += await self.receipts.store.get_since(rest, inp.since, inp.upto)
        by_room: dict[str, list[Any]] = {}
        for r in found:
            by_room.setdefault(r.room_id, []).append(r)
        out = {}
        for room_id, receipts in by_room.items():
            content = receipts_to_edu_content(receipts, inp.requester.user_id)
            if content:
                out[room_id] = {"type": "m.receipt", "content": content}
        return out

    def _typing(self, inp: ExtensionInput) -> dict[str, Any]:
        fresh = self._fresh(inp, "typing")
        out = {}
        joined = set(inp.joined)
        for room_id in self._rooms_for(inp, "typing"):
            if room_id not in joined:
                continue
            again = fresh or room_id in inp.initial_rooms
            since = inp.ephemeral_since
            if not again and (since is None or not self.typing.changed_since(room_id, since)):
                continue
            users = self.typing.typing_users(room_id)
            if users or not again:
                out[room_id] = {"type": "m.typing", "content": {"user_ids": users}}
        return out
