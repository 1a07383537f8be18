"""Room summaries (/room_summary) and the space hierarchy (/hierarchy, and its federation
version for other servers).

A room is "previewable" by a user who is (or was invited/knocking) in it, or when it
is world-readable or its join rule lets the user ask to get in (public, knock,
restricted); by another server when one of its users is joined, or on the same terms.
The hierarchy walks m.space.child events depth first from the root, skipping rooms the
user may not preview; pagination tokens are offsets into that walk (the walk is
deterministic: children sort by `order`, then room ID). A child this server does not
know is asked of the servers its m.space.child event names (`via`), through federation,
and shown if its join rule lets the user in (for restricted rooms: the user is in one of
the allowed rooms here).
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

    async def _summary(
        self, room_id: str, user_id: str | None, origin: str | None = None
    ) -> dict[str, Any] | None:
        """The room's summary if the user (or the server `origin`) may preview it, else None."""
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
        if not allowed and origin is None:
            return None  # (before reading the members: previews are refused often)
        joined = await self.events.get_room_members(room_id, "join")
        if not allowed and not any(member.endswith(f":{origin}") for member in joined):
            return None
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
        # Summaries of remote rooms that came with their parent's federation answer.
        remote: dict[str, dict[str, Any]] = {}
        # Depth-first walk: (room_id, depth, the `via` servers of the child event).
        stack: list[tuple[str, int, list[str]]] = [(room_id, 0, [])]
        index = 0
        while stack and index < start + limit + 1 and len(seen) < MAX_ROOMS_WALKED:
            current, depth, via = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            walk_on = depth < depth_limit
            if current == room_id:
                summary: dict[str, Any] | None = root
            else:
                summary = await self._summary(current, user_id)
            if summary is not None:
                children = await self._children(current, suggested_only) if walk_on else []
            elif await self.events.get_room_version(current) is not None:
                continue  # known here, and not previewable by this user
            else:
                found = await self._remote(user_id, current, via, suggested_only, remote, walk_on)
                if found is None:
                    continue
                summary, children = found
            if index >= start and len(rooms) < limit:
                entry = {k: v for k, v in summary.items() if k != "membership"}
                rooms.append({**entry, "children_state": children})
            index += 1
            for child in reversed(children):
                if child["state_key"] not in seen:
                    child_via = [s for s in child["content"].get("via", []) if isinstance(s, str)]
                    stack.append((child["state_key"], depth + 1, child_via))
        out: dict[str, Any] = {"rooms": rooms}
        if index > start + len(rooms) or (stack and len(rooms) == limit):
            out["next_batch"] = str(start + len(rooms))
        return out

    async def _remote(
        self,
        user_id: str,
        room_id: str,
        via: list[str],
        suggested_only: bool,
        remote: dict[str, dict[str, Any]],
        walk_on: bool,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """A room this server does not know: its summary (from its parent's federation
        answer, or asked of `via`) and children, if the user may see it."""
        summary = remote.get(room_id)
        children: list[dict[str, Any]] = []
        # A space's children are only in its own answer; other rooms' summaries suffice.
        ask = summary is None or (walk_on and summary.get("room_type") == "m.space")
        if ask and self.rooms.remote_hierarchy is not None and via:
            answer = await self.rooms.remote_hierarchy(room_id, via, suggested_only)
            if answer is not None:
                summary = _clean_summary(answer.get("room"), room_id) or summary
                state = answer.get("room", {}).get("children_state") if summary else None
                children = _clean_children(state, suggested_only) if walk_on else []
                for child in answer.get("children") or []:
                    child_id = child.get("room_id") if isinstance(child, dict) else None
                    cleaned = _clean_summary(child, child_id)
                    if cleaned is not None and isinstance(child_id, str):
                        remote.setdefault(child_id, cleaned)
        if summary is None or not await self._may_join(user_id, summary):
            return None
        return summary, children

    async def _may_join(self, user_id: str, summary: dict[str, Any]) -> bool:
        """Whether the user may see a remote room: it is world-readable, or its join rule
        lets them in (restricted: they are joined to one of the allowed rooms here)."""
        rule = summary.get("join_rule", "public")
        if summary.get("world_readable") is True or rule in ("public", "knock"):
            return True
        if rule in ("restricted", "knock_restricted"):
            for allowed in summary.get("allowed_room_ids") or []:
                membership = await self.events.get_membership(allowed, user_id)
                if membership is not None and membership[0] == "join":
                    return True
            return bool(rule == "knock_restricted")  # anyone may knock
        return False

    async def federation_hierarchy(self, origin: str, room_id: str, suggested_only: bool) -> dict[str, Any]:
        """GET /_matrix/federation/v1/hierarchy/{roomId} for the server `origin`: the room,
        its children this server knows and `origin` may preview, and the others it knows."""
        summary = await self._summary(room_id, None, origin)
        if summary is None:
            raise not_found("Room not found or not previewable")
        children_state = await self._children(room_id, suggested_only)
        children: list[dict[str, Any]] = []
        inaccessible: list[str] = []
        for child in children_state:
            child_id = child["state_key"]
            child_summary = await self._summary(child_id, None, origin)
            if child_summary is not None:
                children.append(child_summary)
            elif await self.events.get_room_version(child_id) is not None:
                inaccessible.append(child_id)
        return {
            "room": {**summary, "children_state": children_state},
            "children": children,
            "inaccessible_children": inaccessible,
        }


_SUMMARY_FIELDS: dict[str, type] = {
    "room_id": str,
    "num_joined_members": int,
    "world_readable": bool,
    "guest_can_join": bool,
    "join_rule": str,
    "room_version": str,
    "name": str,
    "topic": str,
    "avatar_url": str,
    "canonical_alias": str,
    "room_type": str,
    "encryption": str,
    "allowed_room_ids": list,
}


def _clean_summary(raw: Any, room_id: Any) -> dict[str, Any] | None:
    """A remote server's room summary, keeping only well-typed known fields."""
    if not isinstance(raw, dict) or raw.get("room_id") != room_id:
        return None
    out: dict[str, Any] = {
        k: v for k, v in raw.items() if k in _SUMMARY_FIELDS and isinstance(v, _SUMMARY_FIELDS[k])
    }
    if "allowed_room_ids" in out:
        out["allowed_room_ids"] = [r for r in out["allowed_room_ids"] if isinstance(r, str)]
    out.setdefault("num_joined_members", 0)
    out.setdefault("world_readable", False)
    out.setdefault("guest_can_join", False)
    return out


def _clean_children(raw: Any, suggested_only: bool) -> list[dict[str, Any]]:
    """A remote room's m.space.child events, as the client API shows them."""
    out = []
    for event in raw if isinstance(raw, list) else []:
        if not isinstance(event, dict) or event.get("type") != "m.space.child":
            continue
        content, state_key = event.get("content"), event.get("state_key")
        if not isinstance(content, dict) or not isinstance(state_key, str) or not state_key.startswith("!"):
            continue
        via = content.get("via")
        if not isinstance(via, list) or not via or (suggested_only and content.get("suggested") is not True):
            continue
        out.append(
            {
                "type": "m.space.child",
                "state_key": state_key,
                "content": content,
                "sender": event.get("sender"),
                "origin_server_ts": event.get("origin_server_ts"),
            }
        )
    return out
