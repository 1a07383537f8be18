"""Sliding sync connections: what each connection has been sent, by position.

A connection is (user, device, `conn_id`). Each response gets a new `pos`; the client's next
request names it, and the server answers relative to what that response held. Until the
client names a newer `pos`, it may retry with the same one (a lost response), so the
position before the newest is kept as well; naming a position drops the ones before it.

Connections live in this process's memory. A `pos` names the process that issued it, so a
`pos` from before a restart, or from another worker, is unknown here: the client gets 400
`M_UNKNOWN_POS` and starts the connection again, as the MSC provides. With several workers,
route a device's sliding sync to one worker (docs/operations.md: a sticky upstream).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from homeserver.errors import Codes, MatrixError
from homeserver.sync.sliding.config import RoomConfig

# Connections kept per process; the least recently used are forgotten beyond this.
MAX_CONNECTIONS = 20_000


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
    # Whether each extension was on: a newly enabled one starts from the beginning.
    extensions: frozenset[str] = frozenset()


@dataclass(slots=True)
class Connection:
    serial: int = 0
    positions: dict[int, Position] = field(default_factory=dict)


ConnKey = tuple[str, str, str]


class Connections:
    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        # Names this process in every pos it issues.
        self.instance = secrets.token_hex(4)
        self._conns: OrderedDict[ConnKey, Connection] = OrderedDict()

    def __len__(self) -> int:
        return len(self._conns)

    def resume(self, key: ConnKey, pos: str | None) -> tuple[Connection, Position | None]:
        """The connection and the position `pos` names (None: a new connection, which
        replaces any other under the same key). Raises M_UNKNOWN_POS."""
        if pos is None:
            conn = Connection()
            self._conns[key] = conn
            self._conns.move_to_end(key)
            while len(self._conns) > self.max_connections:
                self._conns.popitem(last=False)
            return conn, None
        conn_found = self._conns.get(key)
        serial = self._serial(pos)
        if conn_found is None or serial is None or serial not in conn_found.positions:
            raise MatrixError(
                400, Codes.UNKNOWN_POS, "Unknown position: start the sliding sync connection again"
            )
        self._conns.move_to_end(key)
        # The client has this position: the ones before it are no longer needed.
        for old in [s for s in conn_found.positions if s < serial]:
            del conn_found.positions[old]
        return conn_found, conn_found.positions[serial]

    def record(self, conn: Connection, after: Position | None, position: Position) -> str:
        """Store the position of a response built on `after`; its `pos`."""
        conn.serial += 1
        keep = {s: p for s, p in conn.positions.items() if p is after}
        keep[conn.serial] = position
        conn.positions = keep
        return f"{self.instance}_{conn.serial}_{position.stream}"

    def _serial(self, pos: str) -> int | None:
        parts = pos.split("_")
        if len(parts) != 3 or parts[0] != self.instance or not parts[1].isdigit():
            return None
        return int(parts[1])
