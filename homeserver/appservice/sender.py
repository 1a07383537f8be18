"""Pushing events to application services (`PUT /_matrix/app/v1/transactions/{txnId}`).

One task per service with a `url`, on the worker that leads "appservice-sender" (every
process on SQLite). Each task reads the event stream in order from where the service
was left (`appservice_state`), keeps the events the service is interested in, and sends
them as one transaction at a time:

* A transaction is recorded (its ID, its events and the position it ends at) before it
  is first sent, and resent as it was until the service answers 2xx, after a restart
  too: the spec forbids changing a transaction's events on retries.
* Failures (network errors, timeouts, non-2xx answers) back off exponentially from
  RETRY_MIN_S to RETRY_MAX_S and never end: the service gets every event, late.
* A service added to a running server starts from the stream's current position: it
  does not receive the history from before it was configured.
* Interest, per the spec: the room matches a `rooms` namespace; the sender, or a
  member event's target, is a local user in a `users` namespace; the room has a joined
  local member in one; or the room's canonical alias (or an alternative) matches an
  `aliases` namespace. The per-room answers are cached and dropped when the room's
  members or aliases change.

Services with `receive_ephemeral: true` also get typing and read receipts in the rooms
they are interested in, in the transactions' `ephemeral` list (`ephemeral.py`). Services
with `org.matrix.msc3202: true` also get their users' to-device messages, device list
changes and key counts (`encryption.py`).

Logs name the service and transaction, never event content or tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any

import aiohttp
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from homeserver import jsonutil
from homeserver.appservice.encryption import Delivered, EncryptionFields
from homeserver.appservice.ephemeral import (
    presence_between,
    presence_edu,
    receipt_edu,
    receipts_between,
    typing_edu,
)
from homeserver.appservice.queries import AppServiceQueries
from homeserver.appservice.registration import AppService
from homeserver.handlers.client_format import format_events
from homeserver.server import HomeServer
from homeserver.storage.bulk import BulkInsert
from homeserver.storage.cs_schema import appservice_state
from homeserver.storage.device_lists import MembershipChange
from homeserver.storage.event_types import StoredEvent

log = logging.getLogger(__name__)

LEADER = "appservice-sender"
TRANSACTIONS_PATH = "/_matrix/app/v1/transactions/"
# Events read from the stream per step (and at most per transaction).
BATCH = 100
RETRY_MIN_S = 0.5
RETRY_MAX_S = 300.0
REQUEST_TIMEOUT_S = 30.0
# Without a wake-up (e.g. another worker's writes with no Redis), the stream is read this often.
POLL_S = 1.0
# Progress is written at least this often under a steady stream (see _follow).
SAVE_EVERY_S = 5.0
# (service, room) interest answers kept between member or alias changes.
MAX_CACHED_ROOMS = 10_000
_MEMBERSHIP_TYPES = ("m.room.member", "m.room.canonical_alias")
_UPSERT_STATE = BulkInsert(
    appservice_state, ("service_id", "stream_id", "txn_id", "pending_json"), upsert_keys=("service_id",)
)


class AppServiceSender:
    def __init__(self, hs: HomeServer, client: AppServiceQueries) -> None:
        self.hs = hs
        self.client = client
        self.encryption = EncryptionFields(hs)
        self.local = ":" + hs.server_name
        self.services = [s for s in hs.appservices.services if s.url is not None]
        # One per service: each task clears its own before it waits.
        self._wakes = {s.id: asyncio.Event() for s in self.services}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._interest: dict[tuple[str, str], bool] = {}
        # Per service asking for ephemeral data: the rooms whose typers changed since.
        self._typing: dict[str, set[str]] = {s.id: set() for s in self.services if s.receive_ephemeral}
        self.leader: Any = None
        # For metrics and tests: transactions acknowledged, events in them, failed attempts.
        self.sent_transactions = 0
        self.sent_events = 0
        self.failed_attempts = 0

    async def start(self) -> None:
        await self._ensure_bots()
        if not self.services:
            return
        self.hs.notifier.room_observers.append(self._wake_all)
        if any(s.encryption for s in self.services):
            # To-device messages and key changes notify users, not rooms.
            self.hs.notifier.user_observers.append(self._wake_all)
        if self._typing:
            self.hs.typing.observers.append(self._on_typing)
        self.leader = self.hs.db.leader(LEADER)
        self.leader.add_listener(self._on_leadership)
        await self.leader.start()

    async def _ensure_bots(self) -> None:
        """Every service's bot exists from start-up on, so that it can be invited at once."""
        accounts = self.hs.accounts
        for service in self.hs.appservices.services:
            if not await accounts.user_exists(service.sender):
                # Another worker starting beside this one may create it first.
                with contextlib.suppress(IntegrityError):
                    await accounts.create_user(service.sender, None, self.hs.clock.time_ms())
                    log.info("created the bot %s of application service %s", service.sender, service.id)

    async def stop(self) -> None:
        if self.leader is not None:
            await self.leader.stop()
        await self._stop_tasks()

    async def _on_leadership(self, leading: bool) -> None:
        if not leading:
            await self._stop_tasks()
            return
        for service in self.services:
            if service.id not in self._tasks:
                self._tasks[service.id] = asyncio.create_task(
                    self._run(service), name=f"appservice:{service.id}"
                )

    async def _stop_tasks(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # The stream ------------------------------------------------------------------------------

    async def _run(self, service: AppService) -> None:
        while True:
            try:
                await self._follow(service)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database went away, say: start over from what was recorded.
                log.exception("application service %s: sending failed; starting again", service.id)
                await asyncio.sleep(RETRY_MIN_S)

    def _wake_all(self) -> None:
        for wake in self._wakes.values():
            wake.set()

    def _on_typing(self, room_id: str) -> None:
        for rooms in self._typing.values():
            rooms.add(room_id)
        self._wake_all()

    async def _follow(self, service: AppService) -> None:
        position, txn_id, pending = await self._load(service)
        if pending is not None:
            position, txn_id = await self._resend(service, pending)
        typing = self._typing.get(service.id)
        wake = self._wakes[service.id]
        loop = asyncio.get_running_loop()
        # Progress is recorded with the next transaction's record (one write per transaction),
        # when the stream runs dry, or every SAVE_EVERY_S: a crash in between resends the
        # last transaction, under its ID, which the spec allows for.
        unsaved, saved_at = False, loop.time()
        while True:
            # Cleared before the position is read: a commit after this read wakes the wait
            # (the stream position moves before the notification).
            wake.clear()
            upto = self.hs.db.current_stream_id
            if upto <= position and not typing:
                if unsaved:
                    await self._save(service, position, txn_id, None)
                    unsaved, saved_at = False, loop.time()
                try:
                    async with asyncio.timeout(POLL_S):
                        await wake.wait()
                except TimeoutError:
                    # Other workers' commits, should their notifications not reach us.
                    await self.hs.db.refresh_stream_position()
                continue
            end, found, wanted = position, [], []
            if upto > position:
                found = await self.hs.events.events_between(position, upto, BATCH, self.local)
                end = found[-1].stream_id if len(found) == BATCH else upto
                wanted = [s for s in found if await self._interested(service, s)]
            extra: dict[str, Any] = {}
            inbox: Delivered = []
            if service.encryption:
                # The window (position, end] holds just the events read: its memberships are theirs.
                room_wanted = partial(self._room_wanted, service)
                extra, inbox, capped = await self.encryption.between(
                    service, position, end, _memberships(found), room_wanted
                )
                if capped < end:
                    # Many to-device messages: this transaction stops at the last one read.
                    end = capped
                    wanted = [s for s in wanted if s.stream_id <= end]
            edus = await self._ephemeral(service, position, end) if typing is not None else []
            if wanted or edus or extra:
                txn_id += 1
                event_ids = [s.event.event_id for s in wanted]
                pending = {
                    "txn_id": txn_id,
                    "event_ids": event_ids,
                    "ephemeral": edus,
                    "extra": extra,
                    "inbox": inbox,
                    "upto": end,
                }
                await self._save(service, position, txn_id - 1, pending)
                saved_at = loop.time()
                await self._deliver(service, txn_id, wanted, edus, extra)
                await self.encryption.delivered(inbox)
            position, unsaved = end, True
            if loop.time() - saved_at >= SAVE_EVERY_S:
                await self._save(service, position, txn_id, None)
                unsaved, saved_at = False, loop.time()

    async def _ephemeral(self, service: AppService, after: int, upto: int) -> list[dict[str, Any]]:
        """The service's typing changes (those noted so far) and receipts in (after, upto]."""
        noted = self._typing[service.id]
        rooms = sorted(noted)
        noted.clear()  # in place: _follow holds this set
        edus = [typing_edu(self.hs, r) for r in rooms if await self._room_wanted(service, r)]
        if upto > after:
            for room_id, rows in (await receipts_between(self.hs, after, upto)).items():
                if await self._room_wanted(service, room_id):
                    edu = receipt_edu(service, room_id, rows)
                    if edu is not None:
                        edus.append(edu)
            now = self.hs.clock.time_ms()
            for row in await presence_between(self.hs, after, upto):
                if await self._user_wanted(service, row.user_id):
                    edus.append(presence_edu(row, now))
        return edus

    async def _user_wanted(self, service: AppService, user_id: str) -> bool:
        """Whether a user's presence concerns the service: its own user, or a member of a
        room it is interested in."""
        if self._owns_local(service, user_id):
            return True
        for room_id, membership, _, _ in await self.hs.events.get_memberships_for_user(user_id):
            if membership == "join" and await self._room_wanted(service, room_id):
                return True
        return False

    async def _resend(self, service: AppService, pending: dict[str, Any]) -> tuple[int, int]:
        """The transaction in flight when the last leader stopped, sent again unchanged."""
        txn_id, upto = int(pending["txn_id"]), int(pending["upto"])
        found = await self.hs.events.get_events(pending["event_ids"])
        stored = [found[e] for e in pending["event_ids"] if e in found]
        await self._deliver(
            service, txn_id, stored, pending.get("ephemeral") or [], pending.get("extra") or {}
        )
        await self.encryption.delivered([tuple(row) for row in pending.get("inbox") or []])
        await self._save(service, upto, txn_id, None)
        return upto, txn_id

    # Interest --------------------------------------------------------------------------------

    async def _interested(self, service: AppService, stored: StoredEvent) -> bool:
        event = stored.event
        key = (service.id, event.room_id)
        if event.type in _MEMBERSHIP_TYPES:
            self._interest.pop(key, None)  # first: the answers below return early
        for user_id in (event.sender, event.state_key if event.type == "m.room.member" else None):
            if user_id and self._owns_local(service, user_id):
                return True
        return await self._room_wanted(service, event.room_id)

    def _owns_local(self, service: AppService, user_id: str) -> bool:
        """A local user of the service's (the spec: user namespaces cover local users only)."""
        return user_id.endswith(self.local) and service.owns_user(user_id)

    async def _room_wanted(self, service: AppService, room_id: str) -> bool:
        """Whether everything in the room concerns the service (cached per room)."""
        if service.wants_room(room_id):
            return True
        key = (service.id, room_id)
        known = self._interest.get(key)
        if known is None:
            known = await self._room_interest(service, room_id)
            if len(self._interest) >= MAX_CACHED_ROOMS:
                self._interest.clear()
            self._interest[key] = known
        return known

    async def _room_interest(self, service: AppService, room_id: str) -> bool:
        if service.users:
            for user_id in await self.hs.events.get_room_members(room_id, "join"):
                if self._owns_local(service, user_id):
                    return True
        if service.aliases:
            state = await self.hs.events.get_current_state(room_id, keys=[("m.room.canonical_alias", "")])
            for s in state.values():
                content = s.event.content
                alt = content.get("alt_aliases")
                names = [content.get("alias"), *(alt if isinstance(alt, list) else [])]
                if any(isinstance(a, str) and service.owns_alias(a) for a in names):
                    return True
        return False

    # Sending ---------------------------------------------------------------------------------

    async def _deliver(
        self,
        service: AppService,
        txn_id: int,
        stored: list[StoredEvent],
        edus: list[dict[str, Any]],
        extra: dict[str, Any],
    ) -> None:
        """PUT the transaction until the service takes it."""
        content: dict[str, Any] = {
            "events": await format_events(self.hs.events, stored, self.hs.clock.time_ms())
        }
        if service.receive_ephemeral:
            content["ephemeral"] = edus
        content.update(extra)
        body = jsonutil.dumpb(content)
        path = f"{TRANSACTIONS_PATH}{txn_id}"
        delay = RETRY_MIN_S
        while True:
            try:
                status, _ = await self.client.call(service, "PUT", path, timeout=REQUEST_TIMEOUT_S, body=body)
                if 200 <= status < 300:
                    self.sent_transactions += 1
                    self.sent_events += len(stored)
                    log.debug("application service %s took transaction %d", service.id, txn_id)
                    return
                problem = f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                problem = type(e).__name__
            self.failed_attempts += 1
            log.warning(
                "application service %s: transaction %d (%d events) failed (%s); again in %.1f s",
                service.id,
                txn_id,
                len(stored),
                problem,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    # State -----------------------------------------------------------------------------------

    async def _load(self, service: AppService) -> tuple[int, int, dict[str, Any] | None]:
        table = appservice_state.c
        async with self.hs.db.read() as conn:
            row = (
                await conn.execute(
                    select(table.stream_id, table.txn_id, table.pending_json).where(
                        table.service_id == service.id
                    )
                )
            ).first()
        if row is not None:
            return int(row[0]), int(row[1]), jsonutil.loads(row[2]) if row[2] else None
        # New: from now on, not the history.
        position = self.hs.db.current_stream_id
        await self._save(service, position, 0, None)
        return position, 0, None

    async def _save(
        self, service: AppService, position: int, txn_id: int, pending: dict[str, Any] | None
    ) -> None:
        pending_json = jsonutil.dumps(pending) if pending is not None else None
        async with self.hs.db.write() as conn:
            await _UPSERT_STATE.run(conn, [(service.id, position, txn_id, pending_json)])


def _memberships(found: list[StoredEvent]) -> list[MembershipChange]:
    """The member events among the stream's events, in stream order."""
    out: list[MembershipChange] = []
    for stored in found:
        event = stored.event
        membership, target = event.membership, event.state_key
        if membership is not None and target is not None and event.rejected_reason is None:
            out.append(MembershipChange(event.room_id, target, membership, stored.stream_id))
    return out
