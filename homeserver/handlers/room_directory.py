"""The public room directory (`publicRooms`): this server's published rooms, for its own
clients and for other servers (`/_matrix/federation/v1/publicRooms`), and other servers'
directories for this server's clients (`?server=`, through `remote`).

Rooms are listed by joined members, most first, and paged with a numeric `since` token. A
search term matches the name, topic or canonical alias, case-insensitively.

Networks: by default the list is the server's own directory (rooms published with
`visibility: public`). Application services publish rooms in their networks' directories
(`set_network_visibility`); a query with `third_party_instance_id` "<service>|<network>"
lists those, one with `include_all_networks` both.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select

from homeserver import jsonutil
from homeserver.errors import Codes, MatrixError
from homeserver.storage.bulk import BulkInsert
from homeserver.storage.cs_schema import appservice_room_list
from homeserver.storage.engine import Database
from homeserver.storage.schema import current_state, events
from homeserver.storage.schema import rooms as rooms_table

DEFAULT_LIMIT = 100
_PUBLISH = BulkInsert(appservice_room_list, ("appservice_id", "network_id", "room_id"), skip_existing=True)
# Rooms per pair of statements when the directory is read (bound parameters stay few).
MAX_ROOMS_PER_READ = 500
# Strings of the room's state that a directory entry carries: key -> (event type, content key).
_STRINGS = {
    "name": ("m.room.name", "name"),
    "topic": ("m.room.topic", "topic"),
    "canonical_alias": ("m.room.canonical_alias", "alias"),
    "avatar_url": ("m.room.avatar", "url"),
    "room_type": ("m.room.create", "type"),
}
_STATE_TYPES = [
    *{t for t, _ in _STRINGS.values()},
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
]


@dataclass(frozen=True, slots=True)
class DirectoryQuery:
    limit: int = DEFAULT_LIMIT
    since: str | None = None
    search: str | None = None
    include_all_networks: bool = False
    third_party_instance_id: str | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> DirectoryQuery:
        """A POST body's (or a federation request's) paging and filter, checked."""
        limit = body.get("limit", DEFAULT_LIMIT)
        since = body.get("since")
        filter_ = body.get("filter") or {}
        if not isinstance(filter_, dict):
            raise MatrixError(400, Codes.BAD_JSON, "filter must be an object")
        search = filter_.get("generic_search_term")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise MatrixError(400, Codes.INVALID_PARAM, "limit must be a non-negative integer")
        if since is not None and not isinstance(since, str):
            raise MatrixError(400, Codes.BAD_JSON, "since must be a string")
        if search is not None and not isinstance(search, str):
            raise MatrixError(400, Codes.BAD_JSON, "filter.generic_search_term must be a string")
        every = body.get("include_all_networks", False)
        instance = body.get("third_party_instance_id")
        if not isinstance(every, bool):
            raise MatrixError(400, Codes.BAD_JSON, "include_all_networks must be a boolean")
        if instance is not None and not isinstance(instance, str):
            raise MatrixError(400, Codes.BAD_JSON, "third_party_instance_id must be a string")
        return cls(limit or DEFAULT_LIMIT, since, search or None, every, instance)

    def as_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"limit": self.limit}
        if self.since is not None:
            body["since"] = self.since
        if self.search:
            body["filter"] = {"generic_search_term": self.search}
        if self.include_all_networks:
            body["include_all_networks"] = True
        if self.third_party_instance_id is not None:
            body["third_party_instance_id"] = self.third_party_instance_id
        return body


# (server, query) -> that server's answer, for `?server=` (set by federation when enabled).
RemoteDirectory = Callable[[str, DirectoryQuery], Awaitable[dict[str, Any]]]


class RoomDirectory:
    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.server_name = server_name
        self.remote: RemoteDirectory | None = None

    async def public_rooms(self, query: DirectoryQuery, server: str | None = None) -> dict[str, Any]:
        if server is not None and server != self.server_name:
            if self.remote is None:
                raise MatrixError(404, Codes.NOT_FOUND, "Federation is not enabled: no other server's rooms")
            return await self.remote(server, query)
        return await self.local(query)

    async def local(self, query: DirectoryQuery) -> dict[str, Any]:
        own = select(rooms_table.c.room_id).where(rooms_table.c.is_public.is_(True))
        listed = select(appservice_room_list.c.room_id)
        wanted: Any
        if query.third_party_instance_id is not None:
            service_id, _, network_id = query.third_party_instance_id.partition("|")
            wanted = listed.where(
                appservice_room_list.c.appservice_id == service_id,
                appservice_room_list.c.network_id == network_id,
            )
        elif query.include_all_networks:
            wanted = own.union(listed)
        else:
            wanted = own
        async with self.db.read() as conn:
            ids = sorted({r[0] for r in await conn.execute(wanted)})
        chunk = []
        for entry in await self.entries(ids):
            if query.search:
                hay = " ".join(str(entry.get(k, "")) for k in ("name", "topic", "canonical_alias")).lower()
                if query.search.lower() not in hay:
                    continue
            chunk.append(entry)
        chunk.sort(key=lambda e: -int(e["num_joined_members"]))
        start = int(query.since) if query.since is not None and query.since.isdigit() else 0
        page = chunk[start : start + query.limit]
        out: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(chunk)}
        if start + query.limit < len(chunk):
            out["next_batch"] = str(start + query.limit)
        if start > 0:
            out["prev_batch"] = str(max(0, start - query.limit))
        return out

    async def set_network_visibility(
        self, service_id: str, network_id: str, room_id: str, public: bool
    ) -> None:
        """Publish (or withdraw) a room in an application service's network directory."""
        async with self.db.write() as conn:
            if public:
                await _PUBLISH.run(conn, [(service_id, network_id, room_id)])
            else:
                c = appservice_room_list.c
                await conn.execute(
                    delete(appservice_room_list).where(
                        c.appservice_id == service_id, c.network_id == network_id, c.room_id == room_id
                    )
                )

    async def entries(self, room_ids: list[str]) -> list[dict[str, Any]]:
        """The rooms' PublishedRoomsChunks, read with two statements per MAX_ROOMS_PER_READ
        rooms (the directory of a server with thousands of rooms is one request)."""
        counts: dict[str, int] = {}
        contents: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        cs, ev = current_state.c, events.c
        async with self.db.read() as conn:
            for start in range(0, len(room_ids), MAX_ROOMS_PER_READ):
                part = room_ids[start : start + MAX_ROOMS_PER_READ]
                joined = (
                    select(cs.room_id, func.count())
                    .where(cs.room_id.in_(part), cs.type == "m.room.member", cs.membership == "join")
                    .group_by(cs.room_id)
                )
                for room_id, n in await conn.execute(joined):
                    counts[room_id] = int(n)
                state = (
                    select(cs.room_id, cs.type, ev.json)
                    .select_from(current_state.join(events, ev.event_id == cs.event_id))
                    .where(cs.room_id.in_(part), cs.type.in_(_STATE_TYPES), cs.state_key == "")
                )
                for room_id, type_, raw in await conn.execute(state):
                    content = jsonutil.loads(raw).get("content")
                    if isinstance(content, dict):
                        contents[room_id][type_] = content
        return [_entry(room_id, counts.get(room_id, 0), contents[room_id]) for room_id in room_ids]


def _entry(room_id: str, joined: int, state: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One room's PublishedRoomsChunk from its member count and state contents by type."""

    def get(type_: str, key: str) -> Any:
        return state.get(type_, {}).get(key)

    entry: dict[str, Any] = {
        "room_id": room_id,
        "num_joined_members": joined,
        "world_readable": get("m.room.history_visibility", "history_visibility") == "world_readable",
        "guest_can_join": get("m.room.guest_access", "guest_access") == "can_join",
        "join_rule": get("m.room.join_rules", "join_rule") or "public",
    }
    for key, (t, k) in _STRINGS.items():
        value = get(t, k)
        if isinstance(value, str):
            entry[key] = value
    return entry
