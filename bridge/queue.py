"""The outbound per-destination queue: batched transactions, retries with backoff, catch-up.

PDUs and persistent EDUs (receipts, device list updates, to-device messages) are written to
`federation_outbox` before anything is sent; one sender task per destination drains it in
order, at most 50 PDUs and 100 EDUs per transaction, deleting rows only after the
destination answered 200. Failures back off exponentially (bounded by the configured
maximum); a destination that contacts us is considered back up and retried at once.
Typing notifications are ephemeral: kept in memory and dropped if undeliverable.

After a restart `start()` resumes every destination with queued rows, so a server that
was down receives everything it missed, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from bridge.client import FederationClient, FederationError, fed_path
from bridge.store import FederationStore, RetryState
from homeserver.clock import Clock
from homeserver.events import pdu_json
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
    ) -> None:
        self.store = store
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
        # Retry state per destination, loaded once from the database and written through.
        self._retry: dict[str, RetryState] = {}
        self._stopping = False
        # Transactions successfully sent, for tests and metrics.
        self.sent_transactions = 0

    async def start(self) -> None:
        self._stopping = False
        for destination in await self.store.pending_destinations():
            self.wake(destination)

    async def stop(self) -> None:
        self._stopping = True
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
                batch = await self.store.next_batch(destination, MAX_PDUS_PER_TXN, MAX_EDUS_PER_TXN)
                ephemeral = self._ephemeral.pop(destination, [])
                if not batch.row_ids and not ephemeral:
                    if wakeup.is_set():
                        continue  # woken while we looked: there may be something new
                    return
                ok = await self._send_transaction(destination, batch.event_ids, batch.edus + ephemeral)
                if ok:
                    await self.store.remove(batch.row_ids)
                    if retry.failures:
                        await self._set_retry(destination, RetryState(0, 0, 0), self.clock.time_ms())
                else:
                    interval = min(max(retry.retry_interval_ms * 2, self.retry_min_ms), self.retry_max_ms)
                    await self._set_retry(
                        destination,
                        RetryState(retry.failures + 1, interval, self.clock.time_ms() + interval),
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
        pdus = [pdu_json(found[e]) for e in event_ids if e in found]
        now = self.clock.time_ms()
        txn_id = f"{now}.{next(self._txn_counter)}"
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
