"""Room summaries (/room_summary) and the space hierarchy (/hierarchy), for locally known rooms.

A room is "previewable" by a user who is (or was invited/knocking) in it, or when it
is world-readable or its join rule lets the user ask to get in (public, knock,
restricted). The hierarchy walks m.space.child events depth first from the root,
skipping rooms the user may not preview; pagination tokens are offsets into that walk
(the walk is deterministic: children sort by `order`, then room ID).
"""

from __future__ import annotations

from typing import Any

from homeserver.errors import Codes, MatrixError, forbidden, not_found
from homeserver.handlers.rooms import RoomHandler
from homeserver.storage.events import EventStore, StoredEvent

SUMMARY_STATE = (
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
)
PREVIEW_JOIN_RULES = ("public", "knock", "knock_restricted", "restricted")
MAX_ROOMS_WALKED = 1000
MAX_LIMIT = 100
DEFAULT_MAX_DEPTH = 10


def _content(state: dict[tuple[str, str], StoredEvent], type_: str) -> dict[str, Any]:
    s = state.get((type_, ""))
    return s.event.content if s else {}


class SpacesHandler:
    def __init__(self, events: EventStore, rooms: RoomHandler) -> None:
        self.events = events
        self.rooms = rooms

    async def _summary(self, room_id: str, user_id: str | None) -> dict[str, Any] | None:
        """The room's summary if the user may preview it, else None."""
        rv = await self.events.get_room_version(room_id)
        if rv is None:
            return None
        state = await self.events.get_current_state(room_id, types=SUMMARY_STATE)
        join_rule = _content(state, "m.room.join_rules").get("join_rule", "public")
        visibility = _content(state, "m.room.history_visibility").get("history_visibility", "shared")
        membership = await self.events.get_membership(room_id, user_id) if user_id else None
        allowed = (
            (membership is not None and membership[0] in ("join", "invite", "knock"))
            or visibility == "world_readable"
            or join_rule in PREVIEW_JOIN_RULES
        )
        if not allowed:
            return None
        joined = await self.events.get_room_members(room_id, "join")
        out: dict[str, Any] = {
            "room_id": room_id,
            "num_joined_members": len(joined),
            "world_readable": visibility == "world_readable",
            "guest_can_join": _content(state, "m.room.guest_access").get("guest_access") == "can_join",
            "join_rule": join_rule if isinstance(join_rule, str) else "public",
            "room_version": rv.identifier,
        }
        for key, (type_, field) in {
            "name": ("m.room.name", "name"),
            "topic": ("m.room.topic", "topic"),
            "avatar_url": ("m.room.avatar", "url"),
            "canonical_alias": ("m.room.canonical_alias", "alias"),
            "room_type": ("m.room.create", "type"),
            "encryption": ("m.room.encryption", "algorithm"),
        }.items():
            value = _content(state, type_).get(field)
            if isinstance(value, str) and value:
                out[key] = value
        allow = _content(state, "m.room.join_rules").get("allow")
        if isinstance(allow, list):
            ids = [
                a.get("room_id") for a in allow if isinstance(a, dict) and isinstance(a.get("room_id"), str)
            ]
            if ids:
                out["allowed_room_ids"] = ids
        if membership is not None:
            out["membership"] = membership[0]
        return out

    async def room_summary(self, user_id: str | None, room_id_or_alias: str) -> dict[str, Any]:
        room_id, _servers = await self.rooms.resolve_room(room_id_or_alias)
        summary = await self._summary(room_id, user_id)
        if summary is None:
            raise not_found("Room not found or not previewable")
        if user_id is not None and "membership" not in summary:
            summary["membership"] = "leave"
        return summary

    async def _children(self, room_id: str, suggested_only: bool) -> list[dict[str, Any]]:
        state = await self.events.get_current_state(room_id, types=["m.space.child"])
        children = []
        for (_, child_id), stored in state.items():
            content = stored.event.content
            via = content.get("via")
            if not isinstance(via, list) or not via:
                continue  # a child without `via` has been removed
            if suggested_only and content.get("suggested") is not True:
                continue
            children.append(
                {
                    "type": "m.space.child",
                    "state_key": child_id,
                    "content": content,
                    "sender": stored.event.sender,
                    "origin_server_ts": stored.event.origin_server_ts,
                }
            )

        def order_key(c: dict[str, Any]) -> tuple[int, str, str]:
            order = c["content"].get("order")
            valid = (
                isinstance(order, str)
                and 0 < len(order) <= 50
                and all(0x20 <= ord(ch) <= 0x7E for ch in order)
            )
            return (0 if valid else 1, order if valid else "", c["state_key"])

        return sorted(children, key=order_key)

    async def hierarchy(
        self,
        user_id: str,
        room_id: str,
        *,
        suggested_only: bool,
        max_depth: int | None,
        limit: int,
        from_token: str | None,
    ) -> dict[str, Any]:
        root = await self._summary(room_id, user_id)
        if root is None:
            if await self.events.get_room_version(room_id) is None:
                raise not_found("Unknown room")
            raise forbidden("You cannot view this space")
        start = 0
        if from_token:
            if not from_token.isdigit():
                raise MatrixError(400, Codes.INVALID_PARAM, "Invalid from token")
            start = int(from_token)
        depth_limit = DEFAULT_MAX_DEPTH if max_depth is None else max_depth
        limit = max(1, min(limit, MAX_LIMIT))
        rooms: list[dict[str, Any]] = []
        seen: set[str] = set()
        # Depth-first walk; (room_id, depth, summary or None for "look it up").
        stack: list[tuple[str, int, dict[str, Any] | None]] = [(room_id, 0, root)]
        index = 0
        while stack and index < start + limit + 1 and len(seen) < MAX_ROOMS_WALKED:
            current, depth, summary = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            summary = summary or await self._summary(current, user_id)
            if summary is None:
                continue
            children = await self._children(current, suggested_only) if depth < depth_limit else []
            if index >= start and len(rooms) < limit:
                entry = {k: v for k, v in summary.items() if k != "membership"}
                rooms.append({**entry, "children_state": children})
            index += 1
            for child in reversed(children):
                if child["state_key"] not in seen:
                    stack.append((child["state_key"], depth + 1, None))
        out: dict[str, Any] = {"rooms": rooms}
        if index > start + len(rooms) or (stack and len(rooms) == limit):
            out["next_batch"] = str(start + len(rooms))
        return out
