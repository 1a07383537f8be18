"""Sliding sync connections: what each connection has been sent, by position.

A connection is (user, device, `conn_id`). Each response gets a new `pos`; the client's next
request names it, and the server answers relative to what that response held. Until the
client names a newer `pos` it may retry with the same one (a lost or cancelled response),
so the position a request named is kept beside the newest; naming a position drops the
others.

Positions live in this process's memory. When several workers serve the server, each is
also stored in the database (`SlidingPositionStore`), so the next request may go to any
worker. An unknown `pos` (a restart of a single process, or one long expired) gets 400
`M_UNKNOWN_POS`, and the client starts the connection again, as the MSC provides.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from homeserver import jsonutil
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.storage.sliding_positions import SlidingPositionStore
from homeserver.sync.sliding.config import RequiredState, RoomConfig

# Connections kept per process; the least recently used are forgotten beyond this.
MAX_CONNECTIONS = 20_000
# Lazy-loaded members remembered per room in a stored position: past this the members are
# simply sent again (the client holds them already; no harm but bytes).
MAX_STORED_MEMBERS = 200


@dataclass(slots=True)
class RoomSent:
    """What a connection holds of one room."""

    # The stream position its timeline and state were sent up to.
    stream: int
    membership: str
    config: RoomConfig
    # Members whose events were sent for lazy loading.
    members: frozenset[str] = frozenset()
    # Unread counts last sent, so a change is sent even without new events.
    counts: tuple[int, int] = (0, 0)


@dataclass(slots=True)
class Position:
    stream: int
    ephemeral: int
    rooms: dict[str, RoomSent] = field(default_factory=dict)
    # List counts last sent.
    lists: dict[str, int] = field(default_factory=dict)
    # Extensions on: a newly enabled one starts from the beginning.
    extensions: frozenset[str] = frozenset()
    # This process only (not stored): what the request that got this position asked for,
    # and the rooms whose activity would change its answer.
    shape: Any = None
    watch: list[str] | None = None
    # Where the sticky events extension got to (its `next_batch`), while it is on.
    sticky: int | None = None
    # The thread subscriptions extension's limit, while it is on (carried to requests that
    # leave it out).
    thread_limit: int | None = None


@dataclass(slots=True)
class Connection:
    serial: int = 0
    positions: dict[str, Position] = field(default_factory=dict)


ConnKey = tuple[str, str, str]


class Connections:
    def __init__(
        self,
        clock: Clock,
        store: SlidingPositionStore | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.clock = clock
        self.store = store
        self.max_connections = max_connections
        # Names this process in every pos it issues (pos strings never collide across workers).
        self.instance = secrets.token_hex(4)
        self._conns: OrderedDict[ConnKey, Connection] = OrderedDict()

    def __len__(self) -> int:
        return len(self._conns)

    async def resume(self, key: ConnKey, pos: str | None) -> tuple[Connection, Position | None]:
        """The connection and the position `pos` names (None: a new connection, which
        replaces any other under the same key). Raises M_UNKNOWN_POS."""
        conn = self._conns.get(key)
        if pos is None:
            conn = Connection()
            self._remember(key, conn)
            return conn, None
        position = conn.positions.get(pos) if conn is not None else None
        if position is None and self.store is not None:
            data = await self.store.load(key, pos)
            if data is not None:
                position = decode(data)
                conn = conn or Connection()
        if conn is None or position is None:
            raise MatrixError(
                400, Codes.UNKNOWN_POS, "Unknown position: start the sliding sync connection again"
            )
        # The client holds this position: the others are no longer needed.
        conn.positions = {pos: position}
        self._remember(key, conn)
        return conn, position

    async def record(self, key: ConnKey, conn: Connection, named: str | None, position: Position) -> str:
        """Store the position of a response to a request that named `named`; its `pos`."""
        conn.serial += 1
        pos = f"{self.instance}_{conn.serial}_{position.stream}"
        kept = {named: conn.positions[named]} if named is not None and named in conn.positions else {}
        conn.positions = {**kept, pos: position}
        if self.store is not None:
            await self.store.save(key, named, pos, encode(position), self.clock.time_ms())
        return pos

    def _remember(self, key: ConnKey, conn: Connection) -> None:
        self._conns[key] = conn
        self._conns.move_to_end(key)
        while len(self._conns) > self.max_connections:
            self._conns.popitem(last=False)


def encode(position: Position) -> str:
    """A position as compact JSON: each distinct room config is written once."""
    configs: dict[RoomConfig, int] = {}
    rooms: dict[str, list[Any]] = {}
    for room_id, sent in position.rooms.items():
        index = configs.setdefault(sent.config, len(configs))
        members = sorted(sent.members) if len(sent.members) <= MAX_STORED_MEMBERS else []
        rooms[room_id] = [sent.stream, sent.membership, index, members, *sent.counts]
    out: dict[str, Any] = {
        "stream": position.stream,
        "ephemeral": position.ephemeral,
        "lists": position.lists,
        "extensions": sorted(position.extensions),
        "configs": [[c.timeline_limit, sorted(c.required_state.pairs)] for c in configs],
        "rooms": rooms,
    }
    if position.sticky is not None:
        out["sticky"] = position.sticky
    if position.thread_limit is not None:
        out["thread_limit"] = position.thread_limit
    return jsonutil.dumps(out)


def decode(data: str) -> Position:
    raw = jsonutil.loads(data)
    configs = [
        RoomConfig(limit, RequiredState(frozenset((t, k) for t, k in pairs)))
        for limit, pairs in raw["configs"]
    ]
    rooms = {
        room_id: RoomSent(stream, membership, configs[index], frozenset(members), (notes, highlights))
        for room_id, (stream, membership, index, members, notes, highlights) in raw["rooms"].items()
    }
    return Position(
        raw["stream"],
        raw["ephemeral"],
        rooms,
        dict(raw["lists"]),
        frozenset(raw["extensions"]),
        sticky=raw.get("sticky"),
        thread_limit=raw.get("thread_limit"),
    )
