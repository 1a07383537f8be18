"""The outbound per-destination queue: batched transactions, retries with backoff, catch-up.

PDUs and persistent EDUs (receipts, device list updates, to-device messages) are written to
`federation_outbox` before anything is sent; one sender task per destination drains it in
order, at most 50 PDUs and 100 EDUs per transaction, deleting rows only after the
destination answered 200. Failures back off exponentially (bounded by the configured
maximum); a destination that contacts us is considered back up and retried at once.
Typing notifications are ephemeral: kept in memory and dropped if undeliverable.

After a restart `start()` resumes every destination with queued rows, so a server that
was down receives everything it missed, in order.

Several workers on one PostgreSQL database: every worker enqueues (the outbox is shared),
but only the elected leader (`bridge.service`, `Database.leader("federation-sender")`)
drains the outbox (`leading`). It picks up rows other workers queued by polling the outbox
every `poll_s`, and re-reads the retry state of destinations in backoff, since an inbound
request on another worker may have reset it (`remote_up`). A worker that is not leading
still sends its own ephemeral EDUs (typing, presence: memory only) in transactions of
their own. Transaction IDs carry a per-process token, so two workers never reuse one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.client import FederationClient, FederationError, fed_path
from bridge.sticky import unsendable
from bridge.store import FederationStore, OutboxBatch, RetryState
from homeserver.clock import Clock
from homeserver.events import pdu_json
from homeserver.storage.erased_users import ErasedUsers
from homeserver.storage.events import EventStore

log = logging.getLogger(__name__)

MAX_PDUS_PER_TXN = 50
MAX_EDUS_PER_TXN = 100
MAX_EPHEMERAL_PER_DEST = 200
TXN_TIMEOUT_S = 60.0


class OutboundQueue:
    def __init__(
        self,
        store: FederationStore,
        client: FederationClient,
        events: EventStore,
        clock: Clock,
        server_name: str,
        retry_min_ms: int,
        retry_max_ms: int,
        *,
        erased: ErasedUsers,
        poll_s: float = 0.5,
    ) -> None:
        self.store = store
        # This server's erased users, whose sticky events are not sent (bridge.sticky).
        self.erased = erased
        self.client = client
        self.events = events
        self.clock = clock
        self.server_name = server_name
        self.retry_min_ms = retry_min_ms
        self.retry_max_ms = retry_max_ms
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._ephemeral: dict[str, list[dict[str, Any]]] = {}
        self._txn_counter = itertools.count()
        self._txn_prefix = os.urandom(3).hex()
        # Whether this process drains the outbox (the leader; always, with one process).
        self.leading = True
        self.poll_s = poll_s
        self._poller: asyncio.Task[None] | None = None
        # Retry state per destination, loaded once from the database and written through.
        self._retry: dict[str, RetryState] = {}
        # Destinations whose row this process has written since it started.
        self._recorded: set[str] = set()
        self._stopping = False
        # Called whenever this process starts draining the outbox (at start-up, or taking
        # it over from another worker): work that only the queue's owner resumes.
        self.start_hooks: list[Callable[[], Awaitable[object]]] = []
        # Transactions successfully sent, and attempts that failed, for tests and metrics.
        self.sent_transactions = 0
        self.failed_transactions = 0

    async def start(self, *, poll: bool = False) -> None:
        """Drain the outbox: resume every destination with queued rows; with `poll`, also
        keep looking for rows other workers queue."""
        self._stopping = False
        self.leading = True
        for destination in await self.store.pending_destinations():
            self.wake(destination)
        if poll and self._poller is None:
            self._poller = asyncio.create_task(self._poll_forever(), name="federation-outbox-poll")
        for hook in self.start_hooks:
            try:
                await hook()
            except Exception:
                log.exception("resuming work on taking the federation outbox failed")

    async def step_down(self) -> None:
        """Stop draining the outbox (another worker leads now); ephemeral EDUs still go out."""
        self.leading = False
        await self._stop_poller()
        await self._cancel_tasks()
        self._retry.clear()

    async def stop(self) -> None:
        self._stopping = True
        await self._stop_poller()
        await self._cancel_tasks()

    async def _stop_poller(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("federation outbox poll failed: %s: %s", type(e).__name__, e)

    async def poll_once(self) -> None:
        """Wake destinations with rows queued (by any worker) and no sender running; refresh
        the retry state of destinations in backoff from the database."""
        pending = await self.store.pending_destinations()
        backing_off = [d for d in pending if (r := self._retry.get(d)) is not None and r.failures]
        fresh = await self.store.get_retries(backing_off)
        for destination in backing_off:
            cached = self._retry[destination]
            now = fresh.get(destination, RetryState(0, 0, 0))
            if now.next_retry_ts < cached.next_retry_ts:
                self._retry[destination] = now
                self.wake(destination)
        for destination in pending:
            task = self._tasks.get(destination)
            if task is None or task.done():
                self.wake(destination)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()

    # Enqueueing -------------------------------------------------------------------------------

    async def send_pdu(self, event_id: str, destinations: set[str]) -> None:
        destinations = {d for d in destinations if d != self.server_name}
        await self.store.enqueue(destinations, self.clock.time_ms(), event_id=event_id)
        for d in destinations:
            self.wake(d)

    async def send_edu(self, edu_type: str, content: dict[str, Any], destinations: set[str]) -> None:
        destinations = {d for d in destinations if d != self.server_name}
        edu = {"edu_type": edu_type, "content": content}
        await self.store.enqueue(destinations, self.clock.time_ms(), edu=edu)
        for d in destinations:
            self.wake(d)

    def send_ephemeral(self, edu_type: str, content: dict[str, Any], destinations: set[str]) -> None:
        for d in destinations:
            if d == self.server_name:
                continue
            pending = self._ephemeral.setdefault(d, [])
            pending.append({"edu_type": edu_type, "content": content})
            del pending[:-MAX_EPHEMERAL_PER_DEST]
            self.wake(d)

    def wake(self, destination: str) -> None:
        if self._stopping:
            return
        if not self.leading and not self._ephemeral.get(destination):
            return  # the leader sends queued rows
        event = self._wakeups.setdefault(destination, asyncio.Event())
        event.set()
        task = self._tasks.get(destination)
        if task is None or task.done():
            self._tasks[destination] = asyncio.create_task(self._run(destination))

    async def _get_retry(self, destination: str) -> RetryState:
        state = self._retry.get(destination)
        if state is None:
            state = await self.store.get_retry(destination)
            if len(self._retry) > 50_000:
                self._retry.clear()
            self._retry[destination] = state
        return state

    async def _set_retry(self, destination: str, state: RetryState, success_ts: int | None = None) -> None:
        await self.store.set_retry(destination, state, success_ts)
        self._retry[destination] = state

    def failing_destinations(self) -> int:
        """Destinations in backoff, as this process last saw them."""
        return sum(1 for state in self._retry.values() if state.failures)

    async def reset(self, destination: str) -> None:
        """Forget a destination's backoff and send its backlog now (the admin API). A worker
        that does not lead writes the state; the leader's poll finds it (`poll_once`)."""
        await self._set_retry(destination, RetryState(0, 0, 0))
        self.wake(destination)

    async def remote_up(self, destination: str) -> None:
        """The destination talked to us: forget its backoff and retry now if it has a backlog."""
        retry = await self._get_retry(destination)
        if retry.failures:
            await self._set_retry(destination, RetryState(0, 0, 0))
            self.wake(destination)

    # Sending ------------------------------------------------------------------------------------

    async def _run(self, destination: str) -> None:
        wakeup = self._wakeups.setdefault(destination, asyncio.Event())
        try:
            while not self._stopping:
                wakeup.clear()
                retry = await self._get_retry(destination)
                delay_ms = retry.next_retry_ts - self.clock.time_ms()
                if delay_ms > 0:
                    try:
                        await asyncio.wait_for(wakeup.wait(), delay_ms / 1000)
                    except TimeoutError:
                        pass
                    retry = await self._get_retry(destination)
                    if retry.next_retry_ts > self.clock.time_ms():
                        continue
                if self.leading:
                    batch = await self.store.next_batch(destination, MAX_PDUS_PER_TXN, MAX_EDUS_PER_TXN)
                else:
                    batch = OutboxBatch([], [], [])
                ephemeral = self._ephemeral.pop(destination, [])
                if not batch.row_ids and not ephemeral:
                    if wakeup.is_set():
                        continue  # woken while we looked: there may be something new
                    return
                ok = await self._send_transaction(destination, batch.event_ids, batch.edus + ephemeral)
                now = self.clock.time_ms()
                if ok:
                    await self.store.remove(batch.row_ids, destination, batch.event_ids)
                    if retry.failures or destination not in self._recorded:
                        # Recovered, or sent to for the first time since this process began.
                        await self._set_retry(destination, RetryState(0, 0, 0), now)
                        if len(self._recorded) > 50_000:
                            self._recorded.clear()
                        self._recorded.add(destination)
                else:
                    self.failed_transactions += 1
                    interval = min(max(retry.retry_interval_ms * 2, self.retry_min_ms), self.retry_max_ms)
                    await self._set_retry(
                        destination,
                        RetryState(retry.failures + 1, interval, now + interval),
                    )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("federation sender for %s crashed", destination)
        finally:
            if self._tasks.get(destination) is asyncio.current_task():
                del self._tasks[destination]

    async def _send_transaction(
        self, destination: str, event_ids: list[str], edus: list[dict[str, Any]]
    ) -> bool:
        found = await self.events.get_pdus(event_ids)
        # Sticky events of erased users are not sent to a server catching up (MSC4354).
        skipped = await unsendable(self.erased, self.server_name, found.values())
        pdus = [pdu_json(found[e]) for e in event_ids if e in found and e not in skipped]
        now = self.clock.time_ms()
        txn_id = f"{now}.{self._txn_prefix}.{next(self._txn_counter)}"
        body = {"origin": self.server_name, "origin_server_ts": now, "pdus": pdus, "edus": edus}
        try:
            response = await self.client.put(
                destination, fed_path("/_matrix/federation/v1/send/{}", txn_id), body, timeout=TXN_TIMEOUT_S
            )
        except FederationError as e:
            log.info("transaction %s to %s failed: %s", txn_id, destination, e)
            return False
        self.sent_transactions += 1
        results = response.get("pdus", {}) if isinstance(response, dict) else {}
        if isinstance(results, dict):
            for event_id, result in results.items():
                if isinstance(result, dict) and result.get("error"):
                    log.info("%s refused %s: %s", destination, event_id, str(result["error"])[:200])
        return True

    async def idle(self, timeout: float = 10.0) -> bool:
        """Wait until no destination has anything queued (tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if (
                not any(not t.done() for t in self._tasks.values())
                and not await self.store.pending_destinations()
            ):
                return True
            await asyncio.sleep(0.05)
        return False
