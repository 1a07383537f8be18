"""GET /sync.

A long-poll with nothing to say yet is detached from aiohttp while it waits
(homeserver.api.detached): it holds its connection, its parsed request and a notifier
watch, and no task. When woken or timed out a task computes the answer, or parks it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from homeserver import jsonutil
from homeserver.api.detached import Parked, detach, handed_over
from homeserver.api.http import V3, json_response, query_bool, query_int
from homeserver.errors import Codes, MatrixError
from homeserver.handlers import sticky_events
from homeserver.server import HomeServer
from homeserver.sync.filter_cache import FilterCache
from homeserver.sync.handler import SyncRequest
from homeserver.sync.tokens import SyncToken

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

log = logging.getLogger(__name__)

# At shutdown, parked long-polls are answered (the notifier is closing: at once) for at
# most this long before their connections are closed.
SHUTDOWN_ANSWER_S = 5.0


class _ParkedSync(Parked):
    """A detached long-poll: its request and deadline, and the notifier watch it waits on."""

    __slots__ = ("deadline", "polls", "req", "trace", "watch")

    def __init__(
        self, polls: LongPolls, req: SyncRequest, deadline: float, trace: SpanContext | None = None
    ) -> None:
        super().__init__()
        self.polls = polls
        self.req = req
        self.deadline = deadline
        self.watch: asyncio.Future[bool] | None = None
        # The request's span (tracing on): the answers to wake-ups link to it.
        self.trace = trace

    def __call__(self, watch: asyncio.Future[bool]) -> None:
        """The watch ended: woken (True), timed out (False) or cancelled (connection lost)."""
        self.watch = None
        if not watch.cancelled():
            self.polls.answer(self, timed_out=not watch.result())

    def lost(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
        self.polls.parked.discard(self)


class LongPolls:
    """The detached long-polls of this process."""

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.parked: set[_ParkedSync] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def park(self, conn: _ParkedSync, rooms: list[str]) -> None:
        """Wait on the notifier (no await between the sync's pass and this)."""
        remaining = max(0.0, conn.deadline - time.monotonic())
        conn.watch = self.hs.notifier.watch(conn.req.requester.user_id, rooms, remaining)
        conn.watch.add_done_callback(conn)
        self.parked.add(conn)

    def answer(self, conn: _ParkedSync, timed_out: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(conn, timed_out))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, conn: _ParkedSync, timed_out: bool) -> None:
        # As a sync waiting in its handler does: the waker (a sender) is answered first.
        await asyncio.sleep(0)
        if not conn.open:
            return
        # A wake-up is traced as a trace of its own, linked to the request: what it cost to
        # answer. Timeouts are not (every idle client has one per timeout).
        links = [conn.trace] if conn.trace is not None else []
        with self.hs.tracing.span("sync.answer", links=links, root=not timed_out) as span:
            status = await self._compute_and_respond(conn, timed_out)
            if span is not None and status is not None:  # else parked again: nothing new
                span.set_attribute("http.response.status_code", status)

    async def _compute_and_respond(self, conn: _ParkedSync, timed_out: bool) -> int | None:
        """Answer the long-poll, or park it again (None); the status it was answered with."""
        outcome: dict[str, Any] | list[str] | MatrixError
        try:
            outcome = await self.hs.sync.attempt(conn.req, conn.deadline, timed_out)
        except MatrixError as e:
            outcome = e
        except Exception:
            log.exception("Internal error answering a parked /sync")
            outcome = MatrixError(500, Codes.UNKNOWN, "Internal server error")
        if isinstance(outcome, list):
            if conn.open:
                self.park(conn, outcome)
            return None
        self.parked.discard(conn)
        status = outcome.status if isinstance(outcome, MatrixError) else 200
        try:
            if isinstance(outcome, MatrixError):
                conn.respond(status, jsonutil.dumpb(outcome.to_json()))
            else:
                conn.respond(status, jsonutil.dumpb(outcome))
        except Exception:
            # Nothing else would ever answer or close this connection.
            log.exception("Could not answer a parked /sync")
            conn.close()
        return status

    async def shutdown(self, _app: web.Application) -> None:
        """Answer every parked long-poll (the notifier is closed: each answers at once),
        then close what is left, before the database closes."""
        self.hs.notifier.close()
        await asyncio.sleep(0)  # the watches' callbacks start their answers
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=SHUTDOWN_ANSWER_S)
        for conn in list(self.parked):
            conn.close()


LONG_POLLS_KEY = web.AppKey("sotto_long_polls", LongPolls)
UNSTABLE_STATE_AFTER = "org.matrix.msc4222"


def setup(app: web.Application, hs: HomeServer) -> None:
    # The sticky events section (MSC4354) and its cleanup, when sticky events are on.
    sticky_events.setup(hs)
    max_timeout = hs.config.limits.max_sync_timeout_ms
    filters = FilterCache(hs.filters)
    polls = app[LONG_POLLS_KEY] = LongPolls(hs)
    app.on_shutdown.append(polls.shutdown)

    def _state_after_key(request: web.Request) -> str | None:
        """MSC4222 (spec v1.16): `use_state_after`, or the unstable name matrix-js-sdk sends
        (answered under the unstable key)."""
        if query_bool(request, "use_state_after"):
            return "state_after"
        if query_bool(request, UNSTABLE_STATE_AFTER + ".use_state_after"):
            return UNSTABLE_STATE_AFTER + ".state_after"
        return None

    async def sync(request: web.Request) -> web.StreamResponse:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        query = request.query
        filter_json, sync_filter = await filters.resolve(requester.user_id, query.get("filter"))
        since = query.get("since")
        req = SyncRequest(
            requester=requester,
            since=SyncToken.parse(since) if since else None,
            filter=sync_filter,
            filter_json=filter_json,
            set_presence=query.get("set_presence"),
            full_state=query_bool(request, "full_state"),
            timeout_ms=query_int(request, "timeout", 0, maximum=max_timeout),
            state_after=_state_after_key(request),
        )
        deadline = await hs.sync.begin(req)
        outcome = await hs.sync.attempt(req, deadline, False)
        if not isinstance(outcome, list):
            return json_response(outcome)
        conn = detach(request, lambda: _ParkedSync(polls, req, deadline, hs.tracing.current()))
        if conn is None:
            return json_response(await hs.sync.wait_for(req, deadline, outcome))
        polls.park(conn, outcome)
        return handed_over()

    app.router.add_routes([web.get(V3 + "/sync", sync)])
