"""Presence: explicit status (PUT /presence), implicit online-ness from syncing and sending,
and timeouts (idle -> unavailable, no sync -> offline) driven by the injected clock.

State is stored with a stream position so /sync delivers changes to room peers; each
change wakes the user's rooms. Local users who are not offline are tracked in memory
(their last sync and activity) so the timeout sweep never scans the table. After a
restart the sweep starts from the stored rows, treating "now" as their last sync.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError, forbidden
from homeserver.events import Event
from homeserver.storage.accounts import AccountStore
from homeserver.storage.events import EventStore
from homeserver.storage.presence import PresenceRow, PresenceStore
from homeserver.sync.notifier import Notifier
from homeserver.sync.shared import SYNC_CONTEXT

log = logging.getLogger(__name__)

STATES = ("online", "unavailable", "offline", "busy")
IDLE_TIMEOUT_MS = 5 * 60 * 1000
# Longer than the longest long-poll (60 s): a client blocked in /sync is still online.
SYNC_TIMEOUT_MS = 90 * 1000
ACTIVE_WINDOW_MS = 60 * 1000
# Activity refreshes last_active_ts in the database at most this often per user.
ACTIVITY_WRITE_INTERVAL_MS = 60 * 1000
SWEEP_INTERVAL_S = 5.0
MAX_STATUS_MSG = 1024

# The federation layer subscribes to send m.presence EDUs for local users.
PresenceListener = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class _Local:
    state: str
    status_msg: str | None
    last_active_ts: int
    last_sync_ts: int
    last_written_active_ts: int


class PresenceHandler:
    def __init__(
        self,
        store: PresenceStore,
        events: EventStore,
        accounts: AccountStore,
        notifier: Notifier,
        clock: Clock,
        server_name: str,
    ) -> None:
        self.store = store
        self.events = events
        self.accounts = accounts
        self.notifier = notifier
        self.clock = clock
        self.server_name = server_name
        self.listeners: list[PresenceListener] = []
        self._local: dict[str, _Local] = {}
        self._task: asyncio.Task[None] | None = None

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self.server_name)

    # Changes -----------------------------------------------------------------------------

    async def _write(self, user_id: str, state: str, status_msg: str | None, last_active_ts: int) -> None:
        now = self.clock.time_ms()
        currently_active = state == "online" and now - last_active_ts < ACTIVE_WINDOW_MS
        await self.store.set(user_id, state, status_msg, last_active_ts, currently_active)
        rooms = [r for r, m, _, _ in await self.events.get_memberships_for_user(user_id) if m == "join"]
        self.notifier.notify(rooms=rooms, users=[user_id])
        if self.is_local(user_id):
            content = self._content(state, status_msg, last_active_ts, currently_active, now)
            for listener in self.listeners:
                await listener(user_id, content)

    async def set_presence(self, requester_id: str, user_id: str, state: Any, status_msg: Any) -> None:
        if requester_id != user_id:
            raise forbidden("You cannot set the presence of another user")
        if state not in STATES:
            raise MatrixError(400, Codes.INVALID_PARAM, "presence must be online, unavailable or offline")
        if status_msg is not None and (not isinstance(status_msg, str) or len(status_msg) > MAX_STATUS_MSG):
            raise MatrixError(400, Codes.INVALID_PARAM, "status_msg must be a short string")
        now = self.clock.time_ms()
        local = self._local.get(user_id)
        if state == "offline":
            self._local.pop(user_id, None)
        elif local is None:
            self._local[user_id] = _Local(state, status_msg, now, now, now)
        else:
            local.state, local.status_msg, local.last_active_ts = state, status_msg, now
            local.last_written_active_ts = now
        await self._write(user_id, state, status_msg, now)

    async def user_syncing(self, user_id: str, set_presence: str | None) -> None:
        """Called for every /sync: a syncing user is online unless they said otherwise."""
        desired = set_presence if set_presence in ("online", "unavailable", "offline") else "online"
        now = self.clock.time_ms()
        local = self._local.get(user_id)
        if local is not None:
            local.last_sync_ts = now
        if desired == "offline":
            return
        if local is None:
            row = await self.store.get(user_id)
            status = row.status_msg if row else None
            if row is not None and row.state not in ("offline",):
                # Known from before a restart: keep the stored state.
                self._local[user_id] = _Local(row.state, status, row.last_active_ts, now, row.last_active_ts)
                if not (desired == "unavailable" and row.state == "online"):
                    return
            self._local[user_id] = _Local(desired, status, now, now, now)
            await self._write(user_id, desired, status, now)
        elif desired == "unavailable" and local.state == "online":
            local.state = "unavailable"
            await self._write(user_id, "unavailable", local.status_msg, local.last_active_ts)

    async def on_event(self, event: Event, stream_id: int) -> None:
        """Listener: sending an event is activity (online, currently active)."""
        sender = event.sender
        if not self.is_local(sender):
            return
        try:
            now = self.clock.time_ms()
            local = self._local.get(sender)
            if local is None:
                self._local[sender] = _Local("online", None, now, now, now)
                await self._write(sender, "online", None, now)
                return
            local.last_active_ts = now
            if local.state == "unavailable":
                local.state = "online"
            elif now - local.last_written_active_ts < ACTIVITY_WRITE_INTERVAL_MS:
                return
            local.last_written_active_ts = now
            await self._write(sender, local.state, local.status_msg, now)
        except Exception:
            log.exception("presence update failed for %s", sender)

    async def handle_timeouts(self, now: int | None = None) -> None:
        """One sweep: idle users become unavailable, users who stopped syncing go offline."""
        now = self.clock.time_ms() if now is None else now
        for user_id, local in list(self._local.items()):
            if now - local.last_sync_ts > SYNC_TIMEOUT_MS and now - local.last_active_ts > SYNC_TIMEOUT_MS:
                del self._local[user_id]
                await self._write(user_id, "offline", local.status_msg, local.last_active_ts)
            elif local.state == "online" and now - local.last_active_ts > IDLE_TIMEOUT_MS:
                local.state = "unavailable"
                await self._write(user_id, "unavailable", local.status_msg, local.last_active_ts)

    # Background sweep (hs.background) ------------------------------------------------------

    async def start(self) -> None:
        now = self.clock.time_ms()
        for row in await self.store.not_offline():
            if self.is_local(row.user_id):
                self._local[row.user_id] = _Local(row.state, row.status_msg, row.last_active_ts, now, now)
        self._task = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.handle_timeouts()
            except Exception:
                log.exception("presence sweep failed")

    # Reading -----------------------------------------------------------------------------

    @staticmethod
    def _content(
        state: str, status_msg: str | None, last_active_ts: int, currently_active: bool, now: int
    ) -> dict[str, Any]:
        content: dict[str, Any] = {
            "presence": state,
            "last_active_ago": max(0, now - last_active_ts),
            "currently_active": currently_active,
        }
        if status_msg is not None:
            content["status_msg"] = status_msg
        return content

    def row_content(self, row: PresenceRow, now: int) -> dict[str, Any]:
        return self._content(row.state, row.status_msg, row.last_active_ts, row.currently_active, now)

    async def get_presence(self, requester_id: str, user_id: str) -> dict[str, Any]:
        if requester_id != user_id and not await self.store.share_a_room(requester_id, user_id):
            if not await self.accounts.user_exists(user_id) and self.is_local(user_id):
                raise MatrixError(404, Codes.NOT_FOUND, "Unknown user")
            raise forbidden("You do not share a room with this user")
        row = await self.store.get(user_id)
        if row is None:
            return {"presence": "offline"}
        content = self.row_content(row, self.clock.time_ms())
        if row.state == "offline":
            content.pop("currently_active", None)
        return content

    async def sync_events(
        self, user_id: str, joined: list[str], since: int | None, upto: int
    ) -> list[dict[str, Any]]:
        # The user's own presence is left out: it changes as a side effect of syncing,
        # and echoing it would end every long-poll that follows an initial sync.
        if since is not None and since >= upto:
            return []  # an empty window
        ctx = SYNC_CONTEXT.get()
        if ctx is not None and ctx.upto == upto and ctx.since == since:
            if ctx.window is not None and not ctx.window.presence:
                return []  # nobody's presence changed in the window
            # The same for every sync of the window that shares these rooms.
            rooms = tuple(joined)
            found = await ctx.memo.get(
                upto, ("presence", rooms, since), lambda: self.store.for_rooms_since(rooms, [], since, upto)
            )
        else:
            found = await self.store.for_rooms_since(joined, [], since, upto)
        rows = [r for r in found if r.user_id != user_id]
        if since is None:
            rows = [r for r in rows if r.state != "offline"]
        now = self.clock.time_ms()
        return [
            {"type": "m.presence", "sender": r.user_id, "content": self.row_content(r, now)} for r in rows
        ]
