"""User directory: kept current from member events (a listener), searched on request.

Remote users' profiles come from their latest join event seen here. Local users are listed
with their account's global profile, never a display name or avatar set in one room (which
may be private to that room): the store ignores their member events.
"""

from __future__ import annotations

import logging
from typing import Any

from homeserver.errors import Codes, MatrixError
from homeserver.events import Event
from homeserver.storage.user_directory import UserDirectoryStore

log = logging.getLogger(__name__)

MAX_LIMIT = 50
MAX_TERMS = 5


class UserDirectoryHandler:
    def __init__(self, store: UserDirectoryStore, *, search_all_users: bool = False) -> None:
        self.store = store
        # user_directory.search_all_users: every user, not only those sharing a room or in a public one.
        self.search_all_users = search_all_users

    async def on_event(self, event: Event, stream_id: int) -> None:
        # The store records remote users only (see UserDirectoryStore.upsert).
        if event.type != "m.room.member" or event.membership != "join" or not event.state_key:
            return
        name = event.content.get("displayname")
        avatar = event.content.get("avatar_url")
        try:
            await self.store.upsert(
                event.state_key,
                name if isinstance(name, str) else None,
                avatar if isinstance(avatar, str) else None,
            )
        except Exception:
            log.exception("user directory update failed")

    async def search(self, searcher: str, term: Any, limit: Any) -> dict[str, Any]:
        if not isinstance(term, str):
            raise MatrixError(400, Codes.MISSING_PARAM, "search_term is required")
        if limit is None:
            limit = 10
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise MatrixError(400, Codes.INVALID_PARAM, "limit must be a non-negative integer")
        limit = min(limit, MAX_LIMIT)
        terms = term.split()[:MAX_TERMS]
        if not terms or limit == 0:
            return {"limited": False, "results": []}
        found = await self.store.search(searcher, terms, limit + 1, all_users=self.search_all_users)
        results = []
        for e in found[:limit]:
            entry: dict[str, Any] = {"user_id": e.user_id}
            if e.display_name is not None:
                entry["display_name"] = e.display_name
            if e.avatar_url is not None:
                entry["avatar_url"] = e.avatar_url
            results.append(entry)
        return {"limited": len(found) > limit, "results": results}
