"""Sliding sync's thread subscriptions extension (MSC4308, unstable, as Synapse 1.163 speaks
it): `extensions["io.element.msc4308.thread_subscriptions"]`, with thread subscriptions on.

Request: `{"enabled": true, "limit": N}` (`limit` defaults to 100). Response, only when
something changed: `{"subscribed": {room_id: {thread_root_id: {"automatic", "bump_stamp"}}},
"unsubscribed": {room_id: {thread_root_id: {"bump_stamp"}}}, "prev_batch": "ts<n>"}`, each
part present only when not empty. It holds the user's latest changes since the connection's
previous response (all of them when the extension is newly on), at most `limit`, the latest
of each thread; `bump_stamp` is the change's stream position. Past the limit the older
changes are not sent: `prev_batch` marks the gap, and the client pages back through it with
`GET /_matrix/client/unstable/io.element.msc4308/thread_subscriptions?dir=b&from=<prev_batch>
&to=<pos>` (homeserver/api/thread_subscriptions.py), as with Synapse.

Beyond Synapse, as Sotto's other extensions: it stays on for the connection until a request
sets `enabled: false`, and a request that leaves its config (or its `limit`) out keeps the
limit given before, which the connection's position carries (in the database too, with
workers). A subscription change wakes the user's long-poll (the handler notifies the user,
and the change's stream position moves the connection's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeserver.errors import bad_json
from homeserver.handlers.thread_subscriptions import changes_json, token
from homeserver.storage.thread_subscriptions import ThreadSubscriptionStore

NAME = "io.element.msc4308.thread_subscriptions"
DEFAULT_LIMIT = 100
# As the pagination endpoint's cap.
MAX_LIMIT = 512


def limit_for(extensions: Mapping[str, Any], stored: int | None) -> int:
    """The limit of this request: its own `limit`, else the one the connection carries,
    else the default. 400 M_BAD_JSON when malformed."""
    config = extensions.get(NAME)
    if isinstance(config, Mapping) and "limit" in config:
        limit = config["limit"]
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise bad_json(f"extensions.{NAME}.limit must be a non-negative integer")
        return min(limit, MAX_LIMIT)
    return DEFAULT_LIMIT if stored is None else stored


class ThreadSubscriptionsExtension:
    def __init__(self, store: ThreadSubscriptionStore) -> None:
        self.store = store

    async def compute(self, user_id: str, after: int, upto: int, limit: int) -> dict[str, Any] | None:
        """The extension's response for changes in (after, upto]; None when there are none."""
        if limit <= 0 or upto <= after or not self.store.may_have_changes(user_id, after):
            return None
        changes = await self.store.changes(user_id, after, upto, limit)
        if not changes:
            return None
        out = changes_json(changes)
        if len(changes) == limit:
            # There may be older changes: the client pages back from just below these.
            out["prev_batch"] = token(changes[0].stream_id - 1)
        return out
