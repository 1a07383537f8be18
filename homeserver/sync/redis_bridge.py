"""Cross-worker notifications over Redis pub/sub.

After a commit, a worker's Notifier hands (rooms, users) to `RedisBridge.publish`,
which sends them with the committed stream position. Every other worker advances its
`current_stream_id` to that position and wakes the long-polls waiting on those rooms
and users (`notify(..., local_only=True)`, so nothing echoes back).

Invariant: a message carries the sender's `current_stream_id`, below which every
transaction of every worker has ended (homeserver.storage.postgres), so a worker that
learns position P may read everything at or below P. A writer notifies only once its
own positions are at or below that (Database.write waits for it).

Pub/sub is at-most-once. The bridge therefore also polls the committed position in
the database: every `poll_interval_s` while Redis is unreachable and after every
reconnect, every `idle_poll_s` otherwise. Whenever polling moves the position it
wakes every waiter, so a lost message delays a sync but never loses an event.

The same channel carries cache invalidations between workers (`broadcast` and
`subscribe`, the transport of homeserver.invalidation), e.g. an access token revoked on
one worker must not stay cached on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from homeserver import jsonutil
from homeserver.invalidation import RESET_TOPIC
from homeserver.storage.engine import Database
from homeserver.sync.notifier import Notifier

log = logging.getLogger(__name__)

# Pending notifications beyond this are collapsed into one "wake everyone" message.
MAX_PENDING = 10_000
# One published message carries at most this many notifications merged together.
MAX_BATCH = 500


class RedisBridge:
    def __init__(
        self,
        url: str,
        channel: str,
        db: Database,
        notifier: Notifier,
        *,
        poll_interval_s: float = 0.5,
        idle_poll_s: float = 2.0,
    ) -> None:
        self.url = url
        self.channel = channel
        self.db = db
        self.notifier = notifier
        self.poll_interval_s = poll_interval_s
        self.idle_poll_s = idle_poll_s
        # Identifies this process's own messages, which it ignores.
        self.origin = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.connected = False
        self.published = 0
        self.received = 0
        self._pending: list[tuple[list[str], list[str]]] = []
        self._invalidations: list[tuple[str, Any]] = []
        self._handlers: dict[str, list[Callable[[Any], None]]] = {}
        self._overflow = False
        self._wakeup = asyncio.Event()
        self._reconnected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: aioredis.Redis | None = None

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10
        )
        self.notifier.remote_publishers.append(self.publish)
        self._tasks = [
            asyncio.create_task(self._subscribe_forever(), name="redis-subscriber"),
            asyncio.create_task(self._publish_forever(), name="redis-publisher"),
            asyncio.create_task(self._poll_forever(), name="stream-poller"),
        ]

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.notifier.remote_publishers.remove(self.publish)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self.connected = False

    # Publishing ----------------------------------------------------------------------------

    def publish(self, rooms: list[str], users: list[str]) -> None:
        """Notifier hook: queue a notification for the other workers (never blocks)."""
        if len(self._pending) >= MAX_PENDING:
            self._overflow = True
            self._pending.clear()
        if not self._overflow:
            self._pending.append((rooms, users))
        self._wakeup.set()

    def broadcast(self, topic: str, payload: Any) -> None:
        """Send a cache invalidation (any JSON value) to the handlers of `topic` on the other workers."""
        if len(self._invalidations) >= MAX_PENDING:
            # Too many to send: tell everyone to drop their caches instead.
            self._invalidations = [(RESET_TOPIC, None)]
        self._invalidations.append((topic, payload))
        self._wakeup.set()

    def subscribe(self, topic: str, handler: Callable[[Any], None]) -> None:
        """Call `handler(payload)` for each `broadcast(topic, payload)` made by another worker.

        Invalidations sent while this worker was cut off from Redis are lost: on reconnect,
        and on an overflow elsewhere, every handler of `RESET_TOPIC` is called instead."""
        self._handlers.setdefault(topic, []).append(handler)

    def _dispatch(self, topic: str, payload: Any) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                handler(payload)
            except Exception:
                log.exception("invalidation handler for %s failed", topic)

    def _take_batch(self) -> dict[str, Any]:
        message: dict[str, Any] = {"o": self.origin, "p": self.db.current_stream_id}
        if self._invalidations:
            message["i"] = [[t, p] for t, p in self._invalidations[:MAX_BATCH]]
            del self._invalidations[:MAX_BATCH]
        if self._overflow:
            self._overflow = False
            self._pending.clear()
            message["all"] = True
            return message
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        rooms: set[str] = set()
        users: set[str] = set()
        for r, u in batch:
            rooms.update(r)
            users.update(u)
        message["r"] = sorted(rooms)
        message["u"] = sorted(users)
        return message

    async def _publish_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending or self._overflow or self._invalidations:
                message = self._take_batch()
                client = self._client
                if client is None or not self.connected:
                    # Redis is down: the other workers are polling the database meanwhile.
                    continue
                try:
                    await client.publish(self.channel, jsonutil.dumps(message))
                    self.published += 1
                except Exception as e:
                    # Other workers fall back to polling the database while Redis is down.
                    log.debug("publish to Redis failed: %s", type(e).__name__)

    # Subscribing ---------------------------------------------------------------------------

    def _on_message(self, data: bytes | str) -> None:
        try:
            message = jsonutil.loads(data)
            if message.get("o") == self.origin:
                return
            self.received += 1
            self.db.observe_stream_position(int(message.get("p", 0)))
            for topic, payload in message.get("i", ()):
                self._dispatch(str(topic), payload)
            if message.get("all"):
                self.notifier.notify_all()
            else:
                self.notifier.notify(
                    rooms=list(message.get("r", ())), users=list(message.get("u", ())), local_only=True
                )
        except (ValueError, TypeError, AttributeError):
            log.warning("ignoring a malformed notification from Redis")

    async def _subscribe_forever(self) -> None:
        delay = 0.2
        while True:
            client = self._client
            assert client is not None
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if not self.connected:
                    log.info("subscribed to Redis channel %s", self.channel)
                self.connected = True
                delay = 0.2
                # Anything published while we were away is lost: poll once now, drop caches.
                self._reconnected.set()
                self._dispatch(RESET_TOPIC, None)
                async for item in pubsub.listen():
                    if item.get("type") == "message":
                        self._on_message(item["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self.connected:
                    log.warning("lost the Redis connection (%s); polling the database", type(e).__name__)
                self.connected = False
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # Polling -------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            interval = self.idle_poll_s if self.connected else self.poll_interval_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._reconnected.wait()
            self._reconnected.clear()
            await self.poll_once()

    async def poll_once(self) -> None:
        before = self.db.current_stream_id
        try:
            after = await self.db.refresh_stream_position()
        except Exception as e:
            log.debug("polling the stream position failed: %s", type(e).__name__)
            return
        if after != before:
            self.notifier.notify_all()
