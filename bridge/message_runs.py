"""A transaction's run of plain messages in one room, each citing the one before it: checked
and stored in one database transaction, as a local message batch is.

A busy room's sender flushes its queue as such a chain. Taken one PDU at a time, each
message cost its own write transaction and commit, and a dozen statements to learn again
what the one before it had just established. A run is taken only when nothing is in doubt:
none of its events is known here yet, the first cites exactly the room's forward
extremities, the state there is the room's current state, and every event passes the auth
rules against its own auth events and against that state. (Then the spec's checks 4 to 6
have one answer for every event: the state before each is the same, and it is the current
state.) Otherwise `persist_run` stores nothing and returns None, and the caller sends each
event through the full checks (`FederationEventHandler.process`), which fetch what is
missing, reject, soft-fail and resolve forks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bridge.pdu import PduError, parse_pdu, verify_signatures
from bridge.state import EventStateInfo
from homeserver.events import AuthError, Event, check_auth
from homeserver.storage.message_batches import StaleRoomHead

if TYPE_CHECKING:
    from bridge.events_in import FederationEventHandler

log = logging.getLogger(__name__)


def _plain(pdu: Any, room_id: Any) -> bool:
    """A message (no state key, not a redaction) of the room, judged by its raw form."""
    return (
        isinstance(pdu, dict)
        and pdu.get("room_id") == room_id
        and "state_key" not in pdu
        and isinstance(pdu.get("type"), str)
        and pdu["type"] != "m.room.redaction"
    )


async def parse_run(inbound: FederationEventHandler, origin: str, pdus: list[Any], start: int) -> list[Event]:
    """The run of plain messages starting at `pdus[start]`: one room, each citing only the
    one before it, each well-formed and signed. Shorter than two, none: the caller takes
    `pdus[start]` on its own, with the full answer for whatever is wrong with it."""
    first = pdus[start]
    room_id = first.get("room_id") if isinstance(first, dict) else None
    if not isinstance(room_id, str) or start + 1 >= len(pdus) or not _plain(first, room_id):
        return []
    second = pdus[start + 1]
    if not _plain(second, room_id) or not isinstance(second.get("prev_events"), list):
        return []
    if len(second["prev_events"]) != 1:
        return []
    try:
        rv = await inbound.room_version_for(room_id)
    except PduError:
        return []
    if not await inbound.acl_allows(room_id, origin):
        return []
    run: list[Event] = []
    for pdu in pdus[start:]:
        if not _plain(pdu, room_id) or (run and pdu.get("prev_events") != [run[-1].event_id]):
            break
        try:
            run.append(parse_pdu(pdu, rv))
        except PduError:
            break
    checked = await asyncio.gather(
        *(verify_signatures(e, inbound.keyring) for e in run), return_exceptions=True
    )
    for i, outcome in enumerate(checked):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            del run[i:]  # that PDU, taken on its own, gets the answer for what is wrong
            break
    return run if len(run) >= 2 else []


async def persist_run(inbound: FederationEventHandler, events: list[Event]) -> list[int] | None:
    """Check and store a run from `parse_run` in one transaction, or nothing (None) if any of
    it needs the full checks. Returns the events' stream IDs."""
    first = events[0]
    room_id = first.room_id
    tracker = inbound.tracker
    prevs = first.prev_event_ids
    infos = await tracker.get_infos([*prevs, *(e.event_id for e in events)])
    if any(e.event_id in infos for e in events):
        return None  # some are stored already (a retry, or outliers)
    if any(p not in infos or infos[p].state_group is None for p in prevs):
        return None  # missing prev events: fetched by the full checks
    if inbound.policy is not None and not await inbound.policy.all_signed(events):
        return None  # the Policy Server is asked about each, and may refuse some
    wanted = {a for e in events for a in e.auth_event_ids}
    auth_events = await tracker.source.get_events(wanted)
    if len(auth_events) != len(wanted):
        return None
    hs = inbound.hs
    async with hs.creator.room_lock(room_id):
        head, _ = await inbound.events.room_head(room_id, kept=hs.db.room_lock_kept(room_id))
        if set(head) != set(prevs):
            return None  # a fork: the room's state is resolved across its extremities
        state = await tracker.state_before(first)
        if state is None or state != await inbound.events.get_current_state_ids(room_id):
            return None
        create = await inbound.create_from_state(first, state)
        for event in events:
            own = [auth_events[a] for a in event.auth_event_ids]
            if await inbound.auth_failure(event, own) is not None:
                return None
            try:
                allowed = await inbound.auth_events_from_state(event, state)
                check_auth(event, allowed, create, validate_auth_events=False)
            except AuthError:
                return None
        prepared = await tracker.prepare(first, state, prevs)
        derived = await hs.creator.prepare_derived(events, remote=True)
        groups: list[int] = []

        async def extra(conn: AsyncConnection, stream_ids: list[int]) -> None:
            groups.append(await tracker.write_run(conn, prepared, [e.event_id for e in events[1:]]))
            await derived.write(conn, stream_ids)

        try:
            stream_ids = await inbound.events.persist_message_batch([(e, None) for e in events], extra)
        except (StaleRoomHead, IntegrityError) as e:
            # Stored meanwhile after all (as an outlier, say): nothing was written.
            log.info("a run of %d events in %s takes the full checks: %s", len(events), room_id, e)
            return None
        info = EventStateInfo(groups[0], None, False)
        for event in events:
            tracker.settled(event.event_id, info)
    derived.committed()
    return stream_ids
