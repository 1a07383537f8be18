"""Creating local events: build a full PDU, authorise it, persist it, wake syncs.

Every event a local user causes (messages, state, membership) goes through
`EventCreator.create_and_send`. Events in one room are created one at a time
(a per-room lock) so prev_events and depth always form a chain; the event ID
is returned only after the event is committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from signedjson.types import SigningKey
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError, forbidden
from homeserver.events import AuthError, Event, auth_types_for_event, build_event, check_auth
from homeserver.events.room_versions import RoomVersion
from homeserver.events.validation import EventFormatError, validate_pdu
from homeserver.storage import sticky_events
from homeserver.storage.events import EventStore, TxnInfo
from homeserver.storage.message_batches import DuplicateTxn, StaleRoomHead
from homeserver.sync.notifier import Notifier
from homeserver.tracing import DISABLED, Tracing

if TYPE_CHECKING:  # homeserver.forwarding imports this module
    from opentelemetry.trace import SpanContext

    from homeserver.forwarding import RoomForwarding

log = logging.getLogger(__name__)

# A local event cites at most this many forward extremities as prev_events.
MAX_PREV_EVENTS = 10
# PDUs over this size are rejected by the spec.
MAX_PDU_BYTES = 65_536

# At most this many queued messages are committed in one transaction.
MAX_BATCH = 64
# Under a steady load each sender of a room has one message in flight, and those a batch
# answers send again a fraction of a millisecond later. A drain taking only what had
# arrived settled into batches of 1-2 (or two alternating halves) from 10 senders, each
# batch paying a whole commit; so a drain waits until a message from every sender recently
# active in the room is queued (see EventCreator._gather), or none came for GATHER_IDLE_S,
# or GATHER_MAX_S passed. The gap is a gap in arrivals, not a wait from the start: the
# loop answers the last batch and reads the next messages meanwhile (~0.2 ms each).
GATHER_IDLE_S = 0.002
GATHER_MAX_S = 0.005
# A sender counts as active this long after its last message.
GATHER_MEMORY_S = 0.05
# Rooms whose active senders are kept (more are forgotten at once: they only lose a wait).
MAX_GATHER_ROOMS = 10_000
# A wait that saw no message at all was pure delay (two bots answering each other: each
# waits for the message its own one triggers). The room's next drains then skip waiting,
# 1, 2, 4 ... up to this many, until a wait sees messages arrive again.
MAX_GATHER_SKIPS = 64

# Message authorisations remembered (room, type, sender, auth events).
MAX_CACHED_AUTH = 10_000
# Types whose authorisation as a message depends on more than type, sender and auth events.
_AUTH_SENSITIVE_TYPES = frozenset(
    {
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.third_party_invite",
        "m.room.redaction",
        "m.room.join_rules",
    }
)

# Called after an event is persisted (federation sending, push, ...).
EventListener = Callable[[Event, int], Awaitable[None]]


class BatchWork(Protocol):
    """Rows derived from a batch of new messages (push actions, search index), written in
    the batch's own transaction so one commit covers the messages and all their effects."""

    async def write(self, conn: AsyncConnection, stream_ids: list[int]) -> None:
        """Inside the transaction; `stream_ids` are the events' positions, in batch order."""

    def committed(self) -> None:
        """After the commit, before the senders are answered and syncs wake (update caches,
        hand work to queues). Waking is the caller's: it notifies the batch's room."""


# Prepares a batch's work before its transaction (reads allowed); None when there is nothing.
BatchHook = Callable[[list[Event]], Awaitable[BatchWork | None]]


class DerivedWork:
    """Every batch hook's work for one batch of messages (`EventCreator.prepare_derived`),
    local or remote: written in the batch's transaction, then told of the commit."""

    __slots__ = ("works",)

    def __init__(self, works: list[BatchWork]) -> None:
        self.works = works

    def __bool__(self) -> bool:
        return bool(self.works)

    async def write(self, conn: AsyncConnection, stream_ids: list[int]) -> None:
        for work in self.works:
            await work.write(conn, stream_ids)

    def committed(self) -> None:
        for work in self.works:
            try:
                work.committed()
            except Exception:
                log.exception("batch hook failed after commit")


class _Pending:
    """A message waiting for its room's next group commit."""

    __slots__ = ("content", "duplicate_of", "future", "result", "sender", "trace", "ts", "txn", "type")

    def __init__(
        self,
        type: str,
        sender: str,
        content: dict[str, Any],
        txn: TxnInfo | None,
        ts: int | None = None,
        trace: SpanContext | None = None,
    ) -> None:
        self.type = type
        # The sending request's span: the batch's span is its child, or linked to it.
        self.trace = trace
        self.sender = sender
        self.content = content
        self.txn = txn
        self.ts = ts
        self.future: asyncio.Future[tuple[Event, int]] = asyncio.get_running_loop().create_future()
        self.result: tuple[Event, int] | None = None
        self.duplicate_of: _Pending | None = None


def _reset(batch: list[_Pending]) -> None:
    """Forget a batch's first attempt before building it again (refused messages stay refused)."""
    for p in batch:
        p.result = p.duplicate_of = None


def _settle(p: _Pending) -> None:
    """Complete a queued message's future from its result (or its twin's error)."""
    if p.future.done():
        return
    if p.result is not None:
        p.future.set_result(p.result)
        return
    twin = p.duplicate_of
    error = twin.future.exception() if twin is not None and twin.future.done() else None
    p.future.set_exception(error or MatrixError(500, Codes.UNKNOWN, "Event could not be stored"))


class EventCreator:
    def __init__(
        self, store: EventStore, notifier: Notifier, clock: Clock, server_name: str, signing_key: SigningKey
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.clock = clock
        self.server_name = server_name
        self.signing_key = signing_key
        self.listeners: list[EventListener] = []
        # (hook, whether it also handles remote messages)
        self._batch_hooks: list[tuple[BatchHook, bool]] = []
        # Listeners whose work a batch hook does for group-committed messages.
        # (Listener -> whether its hook handles remote messages too.)
        self._covered: dict[EventListener, bool] = {}
        self._pending: dict[str, list[_Pending]] = {}
        self._draining: set[str] = set()
        # Per room: its senders' last message times (loop clock). Stale ones are dropped
        # when the room's next drain looks; the whole table when it holds too many rooms.
        self._senders: dict[str, dict[str, float]] = {}
        # Per room with a drain waiting for its batch to fill: woken by the next message.
        self._gathering: dict[str, asyncio.Future[None]] = {}
        # Per room after fruitless waits: (drains left to skip waiting, the next skip length).
        self._gather_skips: dict[str, tuple[int, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Group commits of messages so far, and the messages they held (for /metrics).
        self.batches = 0
        self.batched_messages = 0
        # Authorisations of messages that passed (see _check_message), least recently used first.
        self._auth_ok: OrderedDict[tuple[str, ...], None] = OrderedDict()
        # With several workers: where messages of rooms another worker owns go.
        self.forwarder: RoomForwarding | None = None
        # Called with each new event once built and authorised, under the room lock, before
        # it is stored: a room's Policy Server signs it here, or refuses it with a
        # MatrixError for the sender (bridge.policy).
        self.policy: Callable[[Event], Awaitable[None]] | None = None
        # Asked first about each new local event, with (sender, room ID, type, state key,
        # content): None to go on, or an awaitable that raises a MatrixError to refuse it
        # (re-consent to changed terms, homeserver/handlers/consent.py). None: nothing asked.
        self.consent: (
            Callable[[str, str | None, str, str | None, dict[str, Any]], Awaitable[None] | None] | None
        ) = None
        self.tracing: Tracing = DISABLED

    def add_batch_hook(self, hook: BatchHook, replaces: EventListener, *, remote: bool = True) -> None:
        """Do `replaces`'s work for group-committed messages with `hook`, inside their
        transaction. `replaces` is still a listener for every other event (state, local
        and remote); it is only skipped for the messages the hook has handled. `remote`:
        the hook also handles remote messages as federation persists them."""
        self._batch_hooks.append((hook, remote))
        self._covered[replaces] = remote
        self.listeners.append(replaces)

    def listeners_for(self, derived_written: bool, *, remote: bool = False) -> list[EventListener]:
        """The listeners an event still needs: all of them, or, when the batch hooks' work
        was written with it (`prepare_derived`), those whose hook did not run for it."""
        if not derived_written:
            return self.listeners
        covered = self._covered
        return [x for x in self.listeners if x not in covered or (remote and not covered[x])]

    def room_lock(self, room_id: str) -> AbstractAsyncContextManager[None]:
        # Per room and, on PostgreSQL, across every worker process sharing the database.
        return self.store.db.room_lock(room_id)

    async def create_and_send(
        self,
        *,
        room_id: str,
        type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = None,
        txn: TxnInfo | None = None,
        redacts: str | None = None,
        forwarded: bool = False,
        check_joined: bool = False,
        ts: int | None = None,
        sticky_ms: int | None = None,
    ) -> tuple[Event, int]:
        """Create, authorise and persist a local event. Returns (event, stream_id).

        `sticky_ms`: a sticky message (MSC4354) for this long; such messages are rare (a
        call's memberships) and are stored on their own, not in a group commit.

        `ts`: the event's `origin_server_ts` instead of now (an application service's
        timestamp massaging); such messages are created here, never forwarded.

        `check_joined`: first refuse a sender who is not joined (see `require_joined`), with
        the same answer whether or not the room exists. `forwarded`: another worker sent
        this message here, to the room's owner."""
        if self.consent is not None and not forwarded:  # a forwarded one was asked where sent
            refusal = self.consent(sender, room_id, type, state_key, content)
            if refusal is not None:
                await refusal
        message = state_key is None and redacts is None and type != "m.room.redaction" and sticky_ms is None
        # Only with a transaction ID: if the owner fails mid-way, the message is created here
        # instead, and the ID keeps it from being stored twice.
        if message and self.forwarder is not None and txn is not None and not forwarded and ts is None:
            owner = self.forwarder.owner(room_id)
            if owner is not None:
                made = await self.forwarder.forward(owner, room_id, type, sender, content, txn, check_joined)
                if made is not None:
                    return made
        if check_joined:
            await self.require_joined(room_id, sender)
        room_version = await self.store.get_room_version(room_id)
        if room_version is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        if message:
            pending = _Pending(type, sender, content, txn, ts, self.tracing.current())
            return await self._enqueue(room_id, room_version, pending)
        async with self.room_lock(room_id):
            if txn is not None:
                # A retry may have raced us to the lock.
                existing = await self.store.get_txn_event(txn)
                if existing is not None:
                    stored = await self.store.get_event(existing)
                    if stored is not None:
                        return stored.event, stored.stream_id
            extra = None if sticky_ms is None else {sticky_events.FIELD: {"duration_ms": sticky_ms}}
            event, auth_map, create = await self._build(
                room_version, room_id, type, sender, content, state_key, redacts, ts=ts, extra=extra
            )
            self._check(event, auth_map, create)
            if self.policy is not None:
                await self.policy(event)
            stream_id = await self.store.persist_event(event, txn=txn, checked=True)
        await self._after_persist([event], [stream_id])
        return event, stream_id

    def recent_senders(self, room_id: str) -> int:
        """How many users sent messages in the room here lately (within GATHER_MEMORY_S)."""
        senders = self._senders.get(room_id)
        if not senders:
            return 0
        now = asyncio.get_running_loop().time()
        return sum(1 for at in senders.values() if now - at <= GATHER_MEMORY_S)

    async def require_joined(self, room_id: str, user_id: str, *, cached: bool = True) -> None:
        """Refuse (403) a user who is not joined to the room, or a room that does not exist.

        `cached`: a cached "join" is enough. That holds for an event about to be created: its
        authorisation checks the membership again under the room lock (with several workers
        the cache may be stale, but the state an event is built from is validated). Anything
        else asks the database, so a stale cache never refuses."""
        if cached and self.store.cached_membership(room_id, user_id) == "join":
            return
        m = await self.store.get_membership(room_id, user_id)
        if m is None or m[0] != "join":
            # The same answer whether or not the room exists: no probing for rooms.
            raise forbidden("You are not joined to this room")

    # Group commit for messages ------------------------------------------------------------
    # Concurrent non-state events in one room are built as a chain and committed in one
    # transaction: the room lock is taken once per batch instead of once per message.

    async def _enqueue(self, room_id: str, room_version: RoomVersion, pending: _Pending) -> tuple[Event, int]:
        queue = self._pending.setdefault(room_id, [])
        queue.append(pending)
        senders = self._senders.get(room_id)
        if senders is None:
            if len(self._senders) >= MAX_GATHER_ROOMS:
                self._senders.clear()
            senders = self._senders[room_id] = {}
        senders[pending.sender] = asyncio.get_running_loop().time()
        gathering = self._gathering.get(room_id)
        if gathering is not None and not gathering.done():
            gathering.set_result(None)
        if room_id not in self._draining:
            self._draining.add(room_id)
            task = asyncio.create_task(self._drain(room_id, room_version))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(pending.future)

    async def _drain(self, room_id: str, room_version: RoomVersion) -> None:
        try:
            loop = asyncio.get_running_loop()
            while self._pending.get(room_id):
                await self._gather(room_id, loop)
                batch: list[_Pending] = []
                try:
                    async with self.room_lock(room_id):
                        queue = self._pending[room_id]
                        batch = queue[:MAX_BATCH]
                        del queue[: len(batch)]
                        with self._batch_span(batch):
                            done = await self._commit_batch(room_id, room_version, batch)
                        self.batches += 1
                        self.batched_messages += len(batch)
                except Exception as e:
                    # The batch failed, or the room lock could not be taken (the database is
                    # away): fail what was taken, or everything queued, so that no sender
                    # waits for a drain that has ended.
                    for p in batch or self._pending.pop(room_id, []):
                        if not p.future.done():
                            p.future.set_exception(e)
                    continue
                # Senders first: their messages are durable and visible, and otherwise each
                # answer waited behind the computation of every /sync the notify wakes. A
                # sender resumes two callbacks after its future is set (through the shield in
                # _enqueue), a woken sync one after the notify: one turn of the loop first.
                for p in batch:
                    _settle(p)
                await asyncio.sleep(0)
                await self._after_persist([e for e, _ in done], [sid for _, sid in done], batched=True)
        finally:
            self._draining.discard(room_id)
            if not self._pending.get(room_id):
                self._pending.pop(room_id, None)

    def _batch_span(self, batch: list[_Pending]) -> AbstractContextManager[Any]:
        """The batch's span: a child of its first sender's request, linked to the others'."""
        traces = [p.trace for p in batch if p.trace is not None]
        parent = traces[0] if traces else None
        return self.tracing.span(
            "event.persist_batch", {"sotto.batch.size": len(batch)}, parent=parent, links=traces[1:]
        )

    async def _gather(self, room_id: str, loop: asyncio.AbstractEventLoop) -> None:
        """Wait (briefly) until every recently active sender of the room has a message queued."""
        senders = self._senders.get(room_id)
        if senders is None or len(senders) <= 1:
            return
        now = loop.time()
        for sender in [s for s, at in senders.items() if now - at > GATHER_MEMORY_S]:
            del senders[sender]
        count = min(len(senders), MAX_BATCH)
        queue = self._pending[room_id]
        if len(queue) >= count:
            return
        skips = self._gather_skips.get(room_id)
        if skips is not None and skips[0] > 0:
            self._gather_skips[room_id] = (skips[0] - 1, skips[1])
            return
        give_up = now + GATHER_MAX_S
        waited_for = len(queue)
        try:
            while len(queue) < count:
                waiter = self._gathering[room_id] = loop.create_future()
                try:
                    async with asyncio.timeout_at(min(loop.time() + GATHER_IDLE_S, give_up)):
                        await waiter
                except TimeoutError:
                    break
        finally:
            self._gathering.pop(room_id, None)
        if len(queue) > waited_for:
            self._gather_skips.pop(room_id, None)
        else:
            length = skips[1] if skips is not None else 1
            self._gather_skips[room_id] = (length, min(2 * length, MAX_GATHER_SKIPS))
            if len(self._gather_skips) > MAX_GATHER_ROOMS:
                self._gather_skips.clear()

    async def _commit_batch(
        self, room_id: str, room_version: RoomVersion, batch: list[_Pending]
    ) -> list[tuple[Event, int]]:
        try:
            return await self._commit_batch_txns(room_id, room_version, batch)
        except StaleRoomHead:
            # Built on cached extremities that were out of date: read the room afresh.
            log.warning("stale cached extremities in %s; building the batch again", room_id)
            self.store.invalidate_room(room_id)
            _reset(batch)
            return await self._commit_batch_txns(room_id, room_version, batch)

    async def _commit_batch_txns(
        self, room_id: str, room_version: RoomVersion, batch: list[_Pending]
    ) -> list[tuple[Event, int]]:
        # Transaction IDs are almost always new, so the batch is written without looking them
        # up first. A stored one (a client's retry, perhaps at another worker at the same
        # moment: the insert waits for that transaction) undoes the batch's write (its
        # savepoint, when it shares a group commit) and sends it round again, looking them up.
        try:
            return await self._commit_batch_once(room_id, room_version, batch, check_txns=False)
        except DuplicateTxn:
            _reset(batch)
            return await self._commit_batch_once(room_id, room_version, batch, check_txns=True)

    async def _commit_batch_once(
        self, room_id: str, room_version: RoomVersion, batch: list[_Pending], check_txns: bool
    ) -> list[tuple[Event, int]]:
        txns = [p.txn for p in batch if p.txn is not None]
        known = await self.store.get_txn_events(txns) if check_txns else {}
        prevs, depth = await self.store.room_head(room_id, kept=self.store.db.room_lock_kept(room_id))
        prevs = prevs[:MAX_PREV_EVENTS]
        chain: list[tuple[Event, TxnInfo | None]] = []
        owners: list[_Pending] = []
        in_batch: dict[tuple[str, str, str], _Pending] = {}
        todo: list[_Pending] = []
        for p in batch:
            if p.future.done():
                continue  # refused in the first round (the retry after a DuplicateTxn)
            key = (p.txn.user_id, p.txn.device_id, p.txn.txn_id) if p.txn else None
            if key is not None and key in known:
                stored = await self.store.get_event(known[key])
                if stored is not None:
                    p.result = (stored.event, stored.stream_id)
                    continue
            if key is not None and key in in_batch:
                p.duplicate_of = in_batch[key]
                continue
            todo.append(p)
            if key is not None:
                in_batch[key] = p
        while todo:
            start = (prevs, depth)
            built: list[tuple[_Pending, Event]] = []
            for p in todo:
                try:
                    event, auth_map, create = await self._build(
                        room_version, room_id, p.type, p.sender, p.content, None, None, (prevs, depth), p.ts
                    )
                    self._check_message(event, auth_map, create)
                except MatrixError as e:
                    p.future.set_exception(e)
                    continue
                prevs, depth = [event.event_id], event.depth
                built.append((p, event))
            todo = []
            refused = await self._policy_refusal(built) if self.policy is not None and built else None
            if refused is not None:
                # Those after the refused one cite it: they are built again, without it.
                index, error = refused
                built[index][0].future.set_exception(error)
                todo = [p for p, _ in built[index + 1 :]]
                built = built[:index]
                prevs, depth = ([built[-1][1].event_id], built[-1][1].depth) if built else start
            for p, event in built:
                chain.append((event, p.txn))
                owners.append(p)
        derived = await self.prepare_derived([event for event, _ in chain])
        # Other rooms draining too: their batches may share this commit.
        gather = len(self._draining) > 1
        ids = await self.store.persist_message_batch(
            chain, derived.write if derived else None, gather, txns_checked=check_txns
        )
        derived.committed()
        for p, (event, _), stream_id in zip(owners, chain, ids, strict=True):
            p.result = (event, stream_id)
        for p in batch:
            if p.duplicate_of is not None:
                p.result = p.duplicate_of.result
        return [(event, stream_id) for (event, _), stream_id in zip(chain, ids, strict=True)]

    async def _policy_refusal(self, built: list[tuple[_Pending, Event]]) -> tuple[int, MatrixError] | None:
        """Ask the room's Policy Server (the `policy` hook) about a batch's events at once,
        not one round trip after another under the room lock; the first it refuses, and why."""
        assert self.policy is not None
        outcomes = await asyncio.gather(*(self.policy(event) for _, event in built), return_exceptions=True)
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, MatrixError):
                return index, outcome
            if isinstance(outcome, BaseException):
                raise outcome
        return None

    async def prepare_derived(self, events: list[Event], *, remote: bool = False) -> DerivedWork:
        """The batch hooks' work for new messages of one room (local, or `remote` ones being
        persisted), to write in their transaction. Their covered listeners are then skipped
        (`listeners_for`)."""
        works: list[BatchWork] = []
        if not events:
            return DerivedWork(works)
        for hook, for_remote in self._batch_hooks:
            if remote and not for_remote:
                continue
            # Hooks are best effort, like listeners: a failing one never fails the messages.
            try:
                work = await hook(events)
            except Exception:
                log.exception("batch hook failed for %d events in %s", len(events), events[0].room_id)
                continue
            if work is not None:
                works.append(work)
        return DerivedWork(works)

    async def create_room_event(
        self,
        *,
        room_version: RoomVersion,
        room_id: str | None,
        sender: str,
        content: dict[str, Any],
    ) -> tuple[Event, int]:
        """Persist the m.room.create event of a new local room."""
        if self.consent is not None:
            refusal = self.consent(sender, room_id, "m.room.create", "", content)
            if refusal is not None:
                await refusal
        now = self.clock.time_ms()
        event = build_event(
            room_version=room_version,
            room_id=room_id,
            type="m.room.create",
            sender=sender,
            content=content,
            state_key="",
            prev_event_ids=[],
            auth_event_ids=[],
            depth=1,
            origin_server_ts=now,
            server_name=self.server_name,
            signing_key=self.signing_key,
        )
        self._check(event, {}, event)
        stream_id = await self.store.persist_event(event, new_room=(room_version.identifier, sender, now))
        await self._after_persist([event], [stream_id])
        return event, stream_id

    async def _build(
        self,
        room_version: RoomVersion,
        room_id: str,
        type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None,
        redacts: str | None,
        prevs: tuple[list[str], int] | None = None,
        ts: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[Event, dict[tuple[str, str], Event], Event | None]:
        # Under the room lock. room_head first: with several workers it validates the cache.
        prev_ids, depth = prevs if prevs is not None else await self.store.room_head(room_id)
        needed = auth_types_for_event(room_version, type, sender, state_key, content)
        needed_with_create = set(needed) | {("m.room.create", "")}
        state = await self.store.get_current_state(room_id, needed_with_create, locked=True)
        create = state.get(("m.room.create", ""))
        auth_map = {k: v.event for k, v in state.items() if k in set(needed)}
        event = build_event(
            room_version=room_version,
            room_id=room_id,
            type=type,
            sender=sender,
            content=content,
            state_key=state_key,
            prev_event_ids=prev_ids[:MAX_PREV_EVENTS],
            auth_event_ids=sorted(e.event_id for e in auth_map.values()),
            depth=min(depth + 1, 2**63 - 1),
            origin_server_ts=self.clock.time_ms() if ts is None else ts,
            server_name=self.server_name,
            signing_key=self.signing_key,
            redacts=redacts,
            extra=extra,
        )
        return event, auth_map, create.event if create else None

    def _check_message(
        self, event: Event, auth_map: dict[tuple[str, str], Event], create: Event | None
    ) -> None:
        """`_check` for a message (no state key), remembering successful authorisations.

        For a message the auth rules look only at its room, type and sender and at the
        auth events (whose IDs pin their content; redaction keeps every field these rules
        read), except for the types below, whose content or state key matter too. So a
        (room, type, sender, auth events) that passed once passes again."""
        if event.type in _AUTH_SENSITIVE_TYPES:
            self._check(event, auth_map, create)
            return
        key = (event.room_id, event.room_version.identifier, event.type, event.sender, *event.auth_event_ids)
        cache = self._auth_ok
        if key in cache:
            cache.move_to_end(key)
            self._check(event, auth_map, create, authorised=True)
            return
        self._check(event, auth_map, create)
        cache[key] = None
        if len(cache) > MAX_CACHED_AUTH:
            cache.popitem(last=False)

    @staticmethod
    def _check(
        event: Event, auth_map: dict[tuple[str, str], Event], create: Event | None, authorised: bool = False
    ) -> None:
        """Checks of an event fresh from build_event, which has already checked the
        canonical JSON of strict room versions' PDUs. `authorised`: the auth rules are
        known to pass (see _check_message)."""
        from homeserver.events.canonical import canonical_json, canonical_json_checked

        if event.room_version.strict_canonical_json:
            size = len(canonical_json_checked(event.pdu))
        else:
            size = len(canonical_json(event.pdu))
        if size > MAX_PDU_BYTES:
            raise MatrixError(413, Codes.TOO_LARGE, "Event too large")
        try:
            # The same format rules remote servers will apply (state key length, identifiers ...).
            validate_pdu(event.pdu, event.room_version, canonical_size=size)
        except EventFormatError as e:
            raise MatrixError(400, Codes.BAD_JSON, f"Invalid event: {e}") from None
        if authorised:
            return
        try:
            check_auth(event, auth_map, create)
        except AuthError as e:
            raise MatrixError(403, Codes.FORBIDDEN, str(e)) from None

    async def _after_persist(self, events: list[Event], stream_ids: list[int], batched: bool = False) -> None:
        # Listeners (push counts, search, federation queue) run before syncs wake, so a
        # notification count arrives in the same /sync as its event. The events are already
        # durable: a failing listener is logged, never turned into an error for the sender.
        # Batched messages skip the listeners whose work their batch hooks already did.
        listeners = self.listeners_for(batched)
        for event, stream_id in zip(events, stream_ids, strict=True):
            for listener in listeners:
                try:
                    await listener(event, stream_id)
                except Exception:
                    log.exception("event listener failed for %s", event.event_id)
        if not events:
            return
        users = [e.state_key for e in events if e.type == "m.room.member" and e.state_key]
        self.notifier.notify(rooms=sorted({e.room_id for e in events}), users=users)
