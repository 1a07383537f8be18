"""Delivery of notifications to push gateways (the Push Gateway API's `/notify`).

Push evaluation (`homeserver.handlers.push`) records each recipient's notifying actions
through `NotifyingPushActionStore`, which hands every committed batch (one or several
events' actions) to `PusherDelivery.enqueue_many`: a non-blocking put on a bounded queue
(full: the batch is dropped and counted), so sending never waits on a gateway. Worker
tasks then load the recipients' `http` pushers (one query per batch of events),
build one `/notify` request per pusher (one device each, so every pusher's own `format`,
`data` and tweaks apply) and POST it.

* Failures (network errors, timeouts, 429 and 5xx) are retried with exponential backoff
  (`RETRY_MIN_S` doubling up to `RETRY_MAX_S`, `MAX_ATTEMPTS` in all); a retry waits on a
  timer and re-enters the queue, so it never holds a worker. Other 4xx answers are final.
* Pushkeys the gateway lists in `rejected` have their pushers removed, as the spec requires.
* Gateway URLs must be http(s) with the path `/_matrix/push/v1/notify`, and must not
  resolve to loopback, private or other special addresses unless they are in
  `push.allowed_gateway_ranges` (the `AddressGuard` of `homeserver.handlers.preview`).
* `format: event_id_only` pushers get only event_id, room_id, counts, devices and prio.
* Logs name the user, app and gateway host, never event content or pushkeys.

Queued work is in memory only: notifications pending at shutdown are not delivered.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sqlalchemy import select
from yarl import URL

from homeserver import jsonutil
from homeserver.clock import Clock
from homeserver.config import PushConfig
from homeserver.handlers.preview import AddressGuard, RefusedAddress, is_refusal
from homeserver.storage.cs_schema import pushers
from homeserver.storage.engine import Database
from homeserver.storage.events import EventStore
from homeserver.storage.push import PushAction, PushActionStore, PusherStore
from homeserver.tracing import DISABLED, Tracing

log = logging.getLogger(__name__)

NOTIFY_PATH = "/_matrix/push/v1/notify"
QUEUE_SIZE = 10_000
WORKERS = 8
MAX_ATTEMPTS = 10
RETRY_MIN_S = 1.0
RETRY_MAX_S = 300.0
REQUEST_TIMEOUT_S = 15.0
MAX_RESPONSE_BYTES = 64 * 1024
# Users whose http pushers are cached (one process only).
MAX_CACHED_USERS = 10_000


@dataclass(slots=True)
class GatewayPusher:
    user_id: str
    app_id: str
    pushkey: str
    data: dict[str, Any]
    pushkey_ts: int  # seconds

    @property
    def url(self) -> str:
        url = self.data.get("url")
        return url if isinstance(url, str) else ""

    @property
    def event_id_only(self) -> bool:
        return self.data.get("format") == "event_id_only"


@dataclass(slots=True)
class _Batch:
    """One event's notifying actions, as recorded by push evaluation."""

    event_id: str
    room_id: str
    actions: dict[str, list[Any]]  # user_id -> actions


@dataclass(slots=True)
class _Send:
    pusher: GatewayPusher
    body: dict[str, Any]
    attempt: int = 0


def tweaks_of(actions: list[Any]) -> dict[str, Any]:
    tweaks: dict[str, Any] = {}
    for action in actions:
        if isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
            tweaks[action["set_tweak"]] = action.get("value", True)
    return tweaks


@dataclass(slots=True)
class PusherDelivery:
    db: Database
    events: EventStore
    push_actions: PushActionStore
    pusher_store: PusherStore
    clock: Clock
    config: PushConfig
    queue_size: int = QUEUE_SIZE
    retry_min_s: float = RETRY_MIN_S
    retry_max_s: float = RETRY_MAX_S
    max_attempts: int = MAX_ATTEMPTS
    dropped: int = 0
    delivered: int = 0
    guard: AddressGuard = field(init=False)
    tracing: Tracing = DISABLED
    _queue: asyncio.Queue[_Batch | list[_Batch] | _Send] | None = field(default=None, init=False)
    _workers: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _timers: set[asyncio.TimerHandle] = field(default_factory=set, init=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False)
    # User ID -> http pushers, dropped when any pusher changes (here or on another worker:
    # the pusher store's version follows the invalidations).
    _pusher_cache: dict[str, list[GatewayPusher]] = field(default_factory=dict, init=False)
    _pusher_cache_version: int = field(default=-1, init=False)

    def __post_init__(self) -> None:
        self.guard = AddressGuard(list(self.config.allowed_gateway_ranges))

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.queue_size)
        self._session = self.guard.session(aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=5))
        self._workers = [asyncio.create_task(self._work(), name=f"push-delivery-{i}") for i in range(WORKERS)]

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._queue = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def idle(self) -> None:
        """Wait until everything queued so far has been handled (tests)."""
        if self._queue is not None:
            await self._queue.join()

    # Intake ------------------------------------------------------------------------------

    def enqueue(self, actions: list[PushAction]) -> None:
        """Called with each event's recorded notifications; never blocks."""
        if not actions or self._queue is None:
            return
        self.enqueue_many([actions])

    def enqueue_many(self, per_event: list[list[PushAction]]) -> None:
        """Several events' recorded notifications, queued as one item; never blocks."""
        if self._queue is None:
            return
        batches = [
            _Batch(actions[0].event_id, actions[0].room_id, {a.user_id: a.actions for a in actions})
            for actions in per_event
            if actions
        ]
        if batches:
            self._put(batches[0] if len(batches) == 1 else batches)

    def _put(self, item: _Batch | list[_Batch] | _Send) -> None:
        if self._queue is None:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("push delivery queue full: %d notifications dropped so far", self.dropped)

    async def _work(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            item = await queue.get()
            try:
                if isinstance(item, _Batch):
                    await self._expand(item)
                elif isinstance(item, list):
                    await self._expand_many(item)
                else:
                    await self._send(item)
            except Exception:
                log.exception("push delivery failed")
            finally:
                queue.task_done()

    # Building requests -------------------------------------------------------------------

    async def _http_pushers(self, user_ids: list[str]) -> list[GatewayPusher]:
        cache = self._pusher_cache
        version = self.pusher_store.version
        if version != self._pusher_cache_version:
            cache.clear()
            self._pusher_cache_version = version
        missing = [u for u in user_ids if u not in cache]
        if missing:
            found = await self._load_http_pushers(missing)
            # Only if no pusher changed while the query ran (it may have read older rows).
            if self.pusher_store.version == version:
                for u in missing:
                    cache[u] = [p for p in found if p.user_id == u]
                while len(cache) > MAX_CACHED_USERS:
                    cache.pop(next(iter(cache)))
            else:
                return found + [p for u in user_ids if u not in missing for p in cache.get(u, [])]
        return [p for u in user_ids for p in cache.get(u, [])]

    async def _load_http_pushers(self, user_ids: list[str]) -> list[GatewayPusher]:
        q = select(
            pushers.c.user_id, pushers.c.app_id, pushers.c.pushkey, pushers.c.data_json, pushers.c.created_ts
        ).where(pushers.c.user_id.in_(user_ids), pushers.c.kind == "http")
        async with self.db.read() as conn:
            rows = (await conn.execute(q)).all()
        out = []
        for user_id, app_id, pushkey, data_json, created_ts in rows:
            data = jsonutil.loads(data_json)
            if isinstance(data, dict):
                out.append(GatewayPusher(user_id, app_id, pushkey, data, int(created_ts or 0) // 1000))
        return out

    async def _unread(self, user_id: str) -> int:
        rooms = [
            r
            for r, membership, _, _ in await self.events.get_memberships_for_user(user_id)
            if membership == "join"
        ]
        counts = await self.push_actions.unread_counts(user_id, rooms)
        return sum(c.notifications for threads in counts.values() for c in threads.values())

    async def _expand_many(self, batches: list[_Batch]) -> None:
        targets = await self._http_pushers(sorted({u for b in batches for u in b.actions}))
        for batch in batches:
            mine = [t for t in targets if t.user_id in batch.actions]
            if mine:
                await self._expand(batch, mine)

    async def _expand(self, batch: _Batch, targets: list[GatewayPusher] | None = None) -> None:
        if targets is None:
            targets = await self._http_pushers(sorted(batch.actions))
        if not targets:
            return
        stored = await self.events.get_event(batch.event_id)
        if stored is None:
            return
        event = stored.event
        state = await self.events.get_current_state(
            batch.room_id,
            [("m.room.name", ""), ("m.room.canonical_alias", ""), ("m.room.member", event.sender)],
        )
        room_name = _str_field(state.get(("m.room.name", "")), "name")
        room_alias = _str_field(state.get(("m.room.canonical_alias", "")), "alias")
        sender_name = _str_field(state.get(("m.room.member", event.sender)), "displayname")
        unread: dict[str, int] = {}
        for pusher in targets:
            if pusher.user_id not in unread:
                unread[pusher.user_id] = await self._unread(pusher.user_id)
            tweaks = tweaks_of(batch.actions.get(pusher.user_id, []))
            high = bool(tweaks.get("highlight")) or "sound" in tweaks or event.type == "m.room.encrypted"
            notification: dict[str, Any] = {
                "event_id": event.event_id,
                "room_id": event.room_id,
                "prio": "high" if high else "low",
                "counts": {"unread": unread[pusher.user_id]},
                "devices": [
                    {
                        "app_id": pusher.app_id,
                        "pushkey": pusher.pushkey,
                        "pushkey_ts": pusher.pushkey_ts,
                        "data": {k: v for k, v in pusher.data.items() if k != "url"},
                        "tweaks": tweaks,
                    }
                ],
            }
            if not pusher.event_id_only:
                notification["type"] = event.type
                notification["sender"] = event.sender
                notification["content"] = event.content
                if sender_name is not None:
                    notification["sender_display_name"] = sender_name
                if room_name is not None:
                    notification["room_name"] = room_name
                if room_alias is not None:
                    notification["room_alias"] = room_alias
                if event.type == "m.room.member":
                    notification["user_is_target"] = event.state_key == pusher.user_id
            await self._send(_Send(pusher, {"notification": notification}))

    # Sending -----------------------------------------------------------------------------

    def _retry(self, send: _Send, why: str) -> None:
        send.attempt += 1
        host = URL(send.pusher.url).host
        if send.attempt >= self.max_attempts:
            log.warning(
                "giving up pushing to %s for %s (%s) after %d attempts: %s",
                host, send.pusher.user_id, send.pusher.app_id, send.attempt, why,
            )  # fmt: skip
            return
        delay = min(self.retry_max_s, self.retry_min_s * 2 ** (send.attempt - 1))
        log.info("push to %s failed (%s); retrying in %.0fs", host, why, delay)
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def fire() -> None:
            if timer is not None:
                self._timers.discard(timer)
            self._put(send)

        timer = loop.call_later(delay, fire)
        self._timers.add(timer)

    async def _send(self, send: _Send) -> None:
        pusher = send.pusher
        try:
            url = URL(pusher.url)
        except ValueError:
            url = URL()
        if url.scheme not in ("http", "https") or not url.host or url.path != NOTIFY_PATH:
            log.warning("pusher of %s (%s) has an unusable gateway URL", pusher.user_id, pusher.app_id)
            return
        session = self._session
        if session is None:
            return
        attributes = {"http.request.method": "POST", "server.address": url.host or ""}
        try:
            self.guard.check_url(url)
            with self.tracing.span("POST push gateway", attributes, client=True, root=True) as span:
                async with session.post(url, json=send.body, allow_redirects=False) as resp:
                    status = resp.status
                    if span is not None:
                        span.set_attribute("http.response.status_code", status)
                    raw = b""
                    async for chunk in resp.content.iter_chunked(16 * 1024):
                        raw += chunk
                        if len(raw) > MAX_RESPONSE_BYTES:
                            raw = b""  # an answer this large is not a /notify response
                            break
        except (RefusedAddress, aiohttp.ClientError, TimeoutError, OSError) as e:
            if is_refusal(e):
                log.warning(
                    "push gateway %s of %s (%s) is on a refused address; see push.allowed_gateway_ranges",
                    url.host, pusher.user_id, pusher.app_id,
                )  # fmt: skip
                return
            self._retry(send, type(e).__name__)
            return
        if status == 429 or status >= 500:
            self._retry(send, f"HTTP {status}")
            return
        if not 200 <= status < 300:
            log.warning(
                "push gateway %s answered HTTP %d for %s (%s)",
                url.host,
                status,
                pusher.user_id,
                pusher.app_id,
            )
            return
        self.delivered += 1
        await self._handle_rejections(pusher, raw)

    async def _handle_rejections(self, pusher: GatewayPusher, raw: bytes) -> None:
        try:
            answer = jsonutil.loads(raw) if raw else {}
        except ValueError:
            return
        rejected = answer.get("rejected") if isinstance(answer, dict) else None
        if isinstance(rejected, list) and pusher.pushkey in rejected:
            await self.pusher_store.delete(pusher.user_id, pusher.app_id, pusher.pushkey)
            log.info(
                "removed a pusher of %s (%s): its gateway rejected the pushkey", pusher.user_id, pusher.app_id
            )


def _str_field(stored: Any, key: str) -> str | None:
    if stored is None:
        return None
    value = stored.event.content.get(key)
    return value if isinstance(value, str) and value else None


class NotifyingPushActionStore(PushActionStore):
    """The push action store, also handing every recorded batch to push delivery."""

    def __init__(self, db: Database, delivery: PusherDelivery | None = None) -> None:
        super().__init__(db)
        self.delivery = delivery

    def recorded(self, per_event: list[list[PushAction]]) -> None:
        if self.delivery is not None:
            self.delivery.enqueue_many(per_event)
