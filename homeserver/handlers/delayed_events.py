"""Delayed events (MSC4140, in its unstable form, as Synapse and matrix-js-sdk speak it).

`PUT /rooms/{roomId}/send/{type}/{txnId}?org.matrix.msc4140.delay=<ms>` (or `/state/...`)
schedules the event instead of sending it, and answers a `delay_id`. Element Call schedules
its "left the call" state this way and keeps restarting the timer while it runs: when the
client disappears, the server sends it. The `delay_id` is unguessable, and whoever holds it
may `cancel`, `restart` or `send` the event without an access token (the MSC delegates it
to the call's SFU that way); its owner may also list and read their scheduled events.

Scheduled events live in `delayed_events` until they are sent or cancelled, so they survive
a restart. One worker at a time (the leader of "delayed-events") sends the due ones; taking
an event off the schedule is one `DELETE`, so a `send` request and the timer never both
send it. The event is created when it is sent, by the ordinary path: the auth rules of that
moment apply, and an event no longer allowed is dropped with a log line. Another user's
state event at the same state key cancels a delayed state event. Delayed membership
changes are refused (Synapse routes them through its membership handler; Element Call does
not use them).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from homeserver.config import DelayedEventsConfig
from homeserver.errors import Codes, MatrixError, not_found
from homeserver.events import Event
from homeserver.handlers.leader_jobs import LeaderService
from homeserver.ratelimit import LimitExceeded, RateLimiter
from homeserver.server import HomeServer
from homeserver.storage.delayed_events import DelayedEvent, DelayedEventStore

log = logging.getLogger(__name__)

DELAY_PARAM = "org.matrix.msc4140.delay"
FEATURE = "org.matrix.msc4140"
LEADER = "delayed-events"
ACTIONS = ("cancel", "restart", "send")
# With several workers, an event scheduled on another one is noticed within this long.
POLL_S = 1.0


class DelayedEvents(LeaderService):
    def __init__(self, hs: HomeServer, config: DelayedEventsConfig) -> None:
        super().__init__(hs, LEADER)
        self.config = config
        self.store = DelayedEventStore(hs.db)
        # The unauthenticated management endpoints, per client address.
        limits = hs.config.rate_limits
        self.limiter = RateLimiter(hs.clock, 10.0, 100, enabled=limits.enabled)
        self._wake = asyncio.Event()

    def parse_delay(self, raw: str) -> int:
        if not self.config.enabled:
            raise MatrixError(403, Codes.FORBIDDEN, "Delayed events are turned off on this server")
        try:
            delay = int(raw)
        except ValueError:
            raise MatrixError(400, Codes.INVALID_PARAM, f"{DELAY_PARAM} must be a whole number") from None
        if delay <= 0:
            raise MatrixError(400, Codes.INVALID_PARAM, f"{DELAY_PARAM} must be positive")
        if delay > self.config.max_delay_ms:
            raise MatrixError(
                400,
                "M_MAX_DELAY_EXCEEDED",
                "The requested delay exceeds the allowed maximum",
                max_delay=self.config.max_delay_ms,
            )
        return delay

    async def schedule(
        self,
        user_id: str,
        device_id: str | None,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None,
        delay: int,
        txn_id: str | None,
        sticky_ms: int | None = None,
    ) -> str:
        """Schedule an event; returns its delay ID (the same one again for a retried txn)."""
        if event_type == "m.room.member":
            raise MatrixError(400, Codes.INVALID_PARAM, "Delayed membership changes are not supported")
        await self.hs.creator.require_joined(room_id, user_id, cached=False)
        if txn_id is not None:
            known = await self.store.for_txn(user_id, device_id, txn_id)
            if known is not None:
                return known
        now = self.hs.clock.time_ms()
        event = DelayedEvent(
            "syd_" + secrets.token_urlsafe(24),
            user_id,
            device_id,
            room_id,
            event_type,
            state_key,
            content,
            delay,
            now,
            sticky_ms,
        )
        next_send = await self.store.add(event, txn_id, self.config.max_per_user)
        if next_send is not None:
            raise LimitExceeded(
                max(1, next_send - now), "The maximum number of delayed events has been reached"
            )
        self._wake.set()
        return event.delay_id

    async def get(self, user_id: str, delay_id: str) -> dict[str, Any]:
        event = await self.store.get(delay_id)
        if event is None or event.user_id != user_id:
            raise not_found("No such delayed event")
        return event.to_json()

    async def of_user(self, user_id: str) -> list[dict[str, Any]]:
        return [e.to_json() for e in await self.store.of_user(user_id)]

    async def act(self, delay_id: str, action: Any, client: str) -> None:
        """`cancel`, `restart` or `send` a scheduled event (404 if there is none)."""
        self.limiter.check(client)
        if action not in ACTIONS:
            raise MatrixError(400, Codes.INVALID_PARAM, "action must be one of " + ", ".join(ACTIONS))
        if action == "restart":
            if not await self.store.restart(delay_id, self.hs.clock.time_ms()):
                raise not_found("No such delayed event")
            self._wake.set()
            return
        event = await self.store.take(delay_id)
        if event is None:
            raise not_found("No such delayed event")
        if action == "send":
            await self._send(event, raise_errors=True)

    async def on_state(self, event: Event, _stream_id: int) -> None:
        """An event listener: a state event (local or remote) cancels other users' delayed
        events at the same state key, as Synapse does: they would overwrite newer state."""
        if not event.is_state() or event.type == "m.room.member":
            return  # delayed membership changes are refused, and members are most state
        key = event.state_key
        assert key is not None
        for delay_id in await self.store.others_at(event.room_id, event.type, key, event.sender):
            if await self.store.take(delay_id) is not None:
                log.info("delayed event %s cancelled: its state was set by another", delay_id)

    async def send_due(self, now: int | None = None) -> int:
        """Send every event whose time has come; returns how many were taken."""
        now = self.hs.clock.time_ms() if now is None else now
        taken = 0
        while due := await self.store.due(now):
            for delay_id in due:
                event = await self.store.take(delay_id)
                if event is not None:
                    taken += 1
                    await self._send(event)
        return taken

    async def _send(self, event: DelayedEvent, raise_errors: bool = False) -> None:
        try:
            await self.hs.creator.create_and_send(
                room_id=event.room_id,
                type=event.type,
                sender=event.user_id,
                content=event.content,
                state_key=event.state_key,
                check_joined=event.state_key is None,
                sticky_ms=event.sticky_duration_ms,
            )
        except MatrixError as e:
            log.info("delayed event %s in %s not sent: %s", event.delay_id, event.room_id, e.errcode)
            if raise_errors:
                raise

    # The timer (hs.background: LeaderService starts and stops it) --------------------------------

    async def _run(self) -> None:
        while True:
            # Cleared first: a schedule() from here on wakes the wait below at once.
            self._wake.clear()
            timeout: float | None = POLL_S
            if self.leader.is_leader:
                try:
                    await self.send_due()
                    next_send = await self.store.next_send_ts()
                    until = (
                        None if next_send is None else max(0.0, (next_send - self.hs.clock.time_ms()) / 1000)
                    )
                    if self.hs.db.exclusive:
                        timeout = until  # only this process schedules, and each one wakes it
                    else:
                        timeout = POLL_S if until is None else min(until, POLL_S)
                except Exception:
                    log.exception("sending delayed events failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
