"""Answering other servers: transactions, event/state queries, backfill, missing events, queries.

No HTTP here (bridge.server parses requests and calls these methods). Every method takes the
authenticated `origin` and answers only with what that server may see: events of rooms it
has (or had) a member in, or world-readable rooms; in the history it fetches (backfill,
missing events, single events), this server's erased users' events pruned
(homeserver/handlers/erasure.py).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any

from bridge.events_in import EventRejected, FederationEventHandler
from bridge.message_runs import parse_run
from bridge.pdu import PduError
from bridge.state import StateTracker
from bridge.store import FederationStore
from homeserver.appservice.accounts import local_user_exists
from homeserver.errors import Codes, MatrixError, forbidden, not_found
from homeserver.events import Event, compute_event_id, pdu_json
from homeserver.events.identifiers import domain_of
from homeserver.server import HomeServer
from homeserver.state import get_auth_chain
from homeserver.storage.profile_fields import ProfileFieldStore

log = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100
# While a transaction is being processed, parked syncs are woken at most this often.
NOTIFY_HOLD_S = 0.05
MAX_BACKFILL = 100

EduHandler = Callable[[str, dict[str, Any]], Awaitable[None]]


class FederationHandler:
    def __init__(
        self,
        hs: HomeServer,
        store: FederationStore,
        tracker: StateTracker,
        inbound: FederationEventHandler,
    ) -> None:
        self.hs = hs
        self.events = hs.events
        self.store = store
        self.tracker = tracker
        self.inbound = inbound
        self.edu_handlers: dict[str, EduHandler] = {}
        self._txn_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # Transactions -------------------------------------------------------------------------------

    async def on_transaction(self, origin: str, txn_id: str, body: dict[str, Any]) -> dict[str, Any]:
        pdus = body.get("pdus", [])
        edus = body.get("edus", [])
        if not isinstance(pdus, list) or not isinstance(edus, list):
            raise MatrixError(400, Codes.BAD_JSON, "pdus and edus must be arrays")
        if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
            raise MatrixError(400, Codes.TOO_LARGE, "too many PDUs or EDUs in one transaction")
        key = (origin, txn_id)
        lock = self._txn_locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                done = await self.store.get_txn_response(origin, txn_id)
                if done is not None:
                    return done
                results: dict[str, Any] = {}
                # Long-polls wake once for the transaction (or every NOTIFY_HOLD_S while
                # it runs), not once per PDU. A lone PDU wakes them as soon as it is stored,
                # before its listeners run.
                hold = self.hs.notifier.held(NOTIFY_HOLD_S) if len(pdus) > 1 else nullcontext()
                with hold:
                    i = 0
                    while i < len(pdus):
                        try:
                            run = await parse_run(self.inbound, origin, pdus, i)
                        except Exception:
                            log.exception("error reading a run of PDUs from %s", origin)
                            run = []  # each PDU gets its own answer
                        if run:
                            outcomes = await self._run(origin, run)
                        else:
                            outcomes = [await self._one_pdu(origin, pdus[i])]
                        i += max(len(run), 1)
                        for event_id, error in outcomes:
                            if event_id is not None:
                                results[event_id] = {"error": error} if error else {}
                    for edu in edus:
                        await self._one_edu(origin, edu)
                response = {"pdus": results}
                await self.store.store_txn_response(origin, txn_id, response, self.hs.clock.time_ms())
                return response
        finally:
            if not lock.locked():
                self._txn_locks.pop(key, None)

    async def _run(self, origin: str, run: list[Event]) -> list[tuple[str | None, str | None]]:
        """A run of messages (`bridge.message_runs`): in one transaction, or else each
        through the full checks."""
        try:
            if await self.inbound.receive_run(run):
                return [(e.event_id, None) for e in run]
        except Exception:
            # Each PDU then gets its own answer (an event the run did store is known).
            log.exception("error storing a run of %d PDUs from %s", len(run), origin)
        return [await self._outcome(origin, e.event_id, self.inbound.process(origin, e)) for e in run]

    async def _one_pdu(self, origin: str, pdu: Any) -> tuple[str | None, str | None]:
        event_id: str | None = None
        room_id = pdu.get("room_id") if isinstance(pdu, dict) else None
        try:
            # A room this server (or another worker) is joining is known once the join is stored.
            rv = await self.inbound.await_room(room_id)
            if rv is not None:
                event_id = compute_event_id(pdu, rv)
        except Exception:
            # Answered by no ID: the PDU's ID is unknown.
            log.exception("error processing a PDU from %s", origin)
            return None, None
        return await self._outcome(origin, event_id, self.inbound.receive(origin, pdu))

    async def _outcome(
        self, origin: str, event_id: str | None, receiving: Awaitable[object]
    ) -> tuple[str | None, str | None]:
        """(event ID, why it was not accepted or None) once `receiving` has run."""
        try:
            await receiving
            return event_id, None
        except (PduError, EventRejected) as e:
            log.info("PDU %s from %s not accepted: %s", event_id, origin, e)
            return event_id, str(e)[:500]
        except Exception as e:
            log.exception("error processing PDU %s from %s", event_id, origin)
            return event_id, f"internal error: {type(e).__name__}"

    async def _one_edu(self, origin: str, edu: Any) -> None:
        if not isinstance(edu, dict) or not isinstance(edu.get("content"), dict):
            return
        handler = self.edu_handlers.get(str(edu.get("edu_type")))
        if handler is None:
            return
        try:
            await handler(origin, edu["content"])
        except Exception:
            log.exception("error processing %s EDU from %s", edu.get("edu_type"), origin)

    # Visibility ---------------------------------------------------------------------------------

    async def check_server_in_room(self, origin: str, room_id: str) -> None:
        """The origin has (or had) a member in the room, or the room is world-readable."""
        if await self.events.get_room_version(room_id) is None:
            raise not_found("Unknown room")
        if not await self.inbound.acl_allows(room_id, origin):
            raise forbidden("Server is denied by the room's server ACL")
        state = await self.events.get_current_state_ids(room_id)
        for etype, skey in state:
            if etype == "m.room.member" and _domain(skey) == origin:
                return
        vis = await self.events.get_current_state(room_id, [("m.room.history_visibility", "")])
        stored = vis.get(("m.room.history_visibility", ""))
        if stored is not None and stored.event.content.get("history_visibility") == "world_readable":
            return
        raise forbidden("Server is not in the room")

    # Event and state queries -----------------------------------------------------------------

    async def on_event(self, origin: str, event_id: str) -> dict[str, Any]:
        found = await self.events.get_pdus([event_id])
        event = found.get(event_id)
        if event is None:
            raise not_found("Unknown event")
        await self.check_server_in_room(origin, event.room_id)
        # As in backfill: an erased user's event goes pruned.
        return self._pdus_response(await self.hs.erasure.for_server([event]))

    def _pdus_response(self, events: list[Event]) -> dict[str, Any]:
        return {
            "origin": self.hs.server_name,
            "origin_server_ts": self.hs.clock.time_ms(),
            "pdus": [pdu_json(e) for e in events],
        }

    async def _event_in_room(self, room_id: str, event_id: str) -> Event:
        event = (await self.events.get_pdus([event_id])).get(event_id)
        if event is None or event.room_id != room_id:
            raise not_found("Unknown event")
        return event

    async def state_before(self, event: Event) -> dict[tuple[str, str], str]:
        state = await self.tracker.state_before(event)
        if state is None:
            raise not_found("The state at this event is unknown")
        return state

    async def on_state_ids(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        await self.check_server_in_room(origin, room_id)
        event = await self._event_in_room(room_id, event_id)
        state = await self.state_before(event)
        chain = await get_auth_chain(list(state.values()), self.tracker.source)
        return {"pdu_ids": sorted(state.values()), "auth_chain_ids": sorted(chain)}

    async def on_state(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        await self.check_server_in_room(origin, room_id)
        event = await self._event_in_room(room_id, event_id)
        state = await self.state_before(event)
        chain = await get_auth_chain(list(state.values()), self.tracker.source)
        found = await self.events.get_pdus(list(set(state.values()) | chain))
        return {
            "pdus": [pdu_json(found[e]) for e in sorted(state.values()) if e in found],
            "auth_chain": [pdu_json(found[e]) for e in sorted(chain) if e in found],
        }

    async def on_event_auth(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        await self.check_server_in_room(origin, room_id)
        event = await self._event_in_room(room_id, event_id)
        chain = await get_auth_chain([event.event_id], self.tracker.source)
        chain.discard(event.event_id)
        found = await self.events.get_pdus(chain)
        return {"auth_chain": [pdu_json(found[e]) for e in sorted(chain) if e in found]}

    async def on_backfill(self, origin: str, room_id: str, starts: list[str], limit: int) -> dict[str, Any]:
        await self.check_server_in_room(origin, room_id)
        limit = max(1, min(limit, MAX_BACKFILL))
        events = await self.walk_back(room_id, starts, limit, include_starts=True)
        # Erased users' events go pruned (as Synapse): their hashes then fail, and the other
        # server keeps the pruned form, as for a redaction it missed.
        return self._pdus_response(await self.hs.erasure.for_server(events))

    async def walk_back(
        self,
        room_id: str,
        starts: list[str],
        limit: int,
        *,
        include_starts: bool,
        stop_at: set[str] | None = None,
        min_depth: int = 0,
    ) -> list[Event]:
        """Events reachable backwards through prev_events, deepest first (a bounded BFS)."""
        stop_at = stop_at or set()
        out: list[Event] = []
        seen: set[str] = set()
        heap: list[tuple[int, str]] = []
        start_events = await self.events.get_pdus(starts)
        for ev in start_events.values():
            if ev.room_id != room_id:
                continue
            seen.add(ev.event_id)
            if include_starts:
                heapq.heappush(heap, (-ev.depth, ev.event_id))
            else:
                await self._push_prevs(ev, heap, seen, stop_at)
        cache: dict[str, Event] = dict(start_events)
        while heap and len(out) < limit:
            _, eid = heapq.heappop(heap)
            maybe = cache.get(eid) or (await self.events.get_pdus([eid])).get(eid)
            if maybe is None:
                continue
            ev = maybe
            if ev.room_id != room_id or ev.depth < min_depth:
                continue
            info = (await self.tracker.get_infos([eid])).get(eid)
            if info is not None and info.rejected_reason is not None:
                continue
            out.append(ev)
            prevs = [p for p in ev.prev_event_ids if p not in seen and p not in stop_at]
            found = await self.events.get_pdus(prevs)
            for p, pev in found.items():
                seen.add(p)
                cache[p] = pev
                heapq.heappush(heap, (-pev.depth, p))
        return out

    async def _push_prevs(
        self, ev: Event, heap: list[tuple[int, str]], seen: set[str], stop_at: set[str]
    ) -> None:
        prevs = [p for p in ev.prev_event_ids if p not in seen and p not in stop_at]
        for p, pev in (await self.events.get_pdus(prevs)).items():
            seen.add(p)
            heapq.heappush(heap, (-pev.depth, p))

    async def on_get_missing_events(self, origin: str, room_id: str, body: dict[str, Any]) -> dict[str, Any]:
        await self.check_server_in_room(origin, room_id)
        earliest = [e for e in body.get("earliest_events", []) if isinstance(e, str)]
        latest = [e for e in body.get("latest_events", []) if isinstance(e, str)]
        limit = body.get("limit", 10)
        min_depth = body.get("min_depth", 0)
        if not isinstance(limit, int) or not isinstance(min_depth, int):
            raise MatrixError(400, Codes.BAD_JSON, "limit and min_depth must be integers")
        limit = max(0, min(limit, 20))
        events = await self.walk_back(
            room_id, latest, limit, include_starts=False, stop_at=set(earliest), min_depth=min_depth
        )
        events.sort(key=lambda e: (e.depth, e.event_id))
        # Erased users' events go pruned, as in backfill.
        return {"events": [pdu_json(e) for e in await self.hs.erasure.for_server(events)]}

    # Queries ------------------------------------------------------------------------------------

    async def on_query_profile(self, user_id: str, field: str | None) -> dict[str, Any]:
        if not self.hs.config.profiles.allow_profile_lookup_over_federation:
            raise MatrixError(
                403, Codes.FORBIDDEN, "Profile lookup over federation is disabled on this homeserver"
            )
        if _domain(user_id) != self.hs.server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, "User is not local to this server")
        profile = await self.hs.accounts.get_profile(user_id)
        if profile is None and await local_user_exists(self.hs, user_id):
            profile = await self.hs.accounts.get_profile(user_id)
        if profile is None:
            raise not_found("Profile not found")
        displayname, avatar_url, _ = profile
        # Custom fields too (spec v1.16), under the display name and avatar.
        out: dict[str, Any] = await ProfileFieldStore(self.hs.db).all_of(user_id)
        if displayname is not None:
            out["displayname"] = displayname
        if avatar_url is not None:
            out["avatar_url"] = avatar_url
        if field is not None:
            if field not in out and field not in ("displayname", "avatar_url"):
                raise not_found("Profile field not found")
            return {field: out[field]} if field in out else {}
        return out

    async def on_query_directory(self, room_alias: str) -> dict[str, Any]:
        if _domain(room_alias) != self.hs.server_name:
            raise MatrixError(400, Codes.INVALID_PARAM, "Room alias is not local to this server")
        found = await self.hs.aliases.get(room_alias)
        if found is None:
            raise not_found("Room alias not found")
        room_id = found[0]
        servers = {self.hs.server_name}
        for user_id in await self.events.get_room_members(room_id, "join"):
            servers.add(_domain(user_id))
        return {
            "room_id": room_id,
            "servers": [self.hs.server_name, *sorted(servers - {self.hs.server_name})],
        }


def _domain(identifier: str) -> str:
    try:
        return domain_of(identifier)
    except ValueError:
        return ""
