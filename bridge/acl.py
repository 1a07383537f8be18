"""Server ACLs (m.room.server_acl): which servers may take part in a room."""

from __future__ import annotations

import fnmatch
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from bridge.discovery import is_ip_literal, split_server_name

if TYPE_CHECKING:
    from homeserver.storage.events import EventStore


@lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    # Only * and ? are special in ACL globs; fnmatch also treats [...] specially, so escape it.
    return re.compile(fnmatch.translate(pattern.replace("[", "[[]")), re.IGNORECASE)


def server_allowed(server_name: str, content: dict[str, Any]) -> bool:
    """The spec's algorithm: IP literals, then deny, then allow (port ignored)."""
    try:
        host, _ = split_server_name(server_name)
    except ValueError:
        return False
    if content.get("allow_ip_literals", True) is False and is_ip_literal(host):
        return False
    deny = content.get("deny", [])
    allow = content.get("allow", [])
    if isinstance(deny, list):
        for pattern in deny:
            if isinstance(pattern, str) and _glob(pattern).fullmatch(host):
                return False
    if isinstance(allow, list):
        for pattern in allow:
            if isinstance(pattern, str) and _glob(pattern).fullmatch(host):
                return True
    return False


async def room_allows(events: EventStore, room_id: str, server: str) -> bool:
    """Whether the room's current m.room.server_acl (if any) lets ``server`` take part."""
    acl = await events.get_current_state(room_id, [("m.room.server_acl", "")])
    stored = acl.get(("m.room.server_acl", ""))
    return stored is None or server_allowed(server, stored.event.content)
