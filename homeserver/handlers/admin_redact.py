"""Redacting a user's events in bulk: the logic behind Synapse's admin API
`POST /_synapse/admin/v1/user/{userId}/redact` and `GET .../user/redact_status/{redactId}`.

Follows Synapse (synapse/handlers/admin.py, `_redact_all_events`):
* Only messages (`m.room.message`, `m.room.encrypted`) and the user's own joins (their
  display names and avatars) are redacted; other state and membership events are left alone,
  so rooms keep their meaning. Events already redacted are skipped.
* Per room, at most `limit` of the user's events of those types are looked at, newest first
  (by stream order), within `after_ts`/`before_ts` (origin_server_ts, inclusive).
* A local user's events are redacted by the user ("puppeting"), a remote user's by the admin,
  and every one by the admin with `use_admin`. Sotto always builds a local event on the
  room's current head, where a user who left or was banned may send nothing (Synapse forks
  the room's graph at the redacted event instead), so in a room the local user is no longer
  joined to the admin sends the redactions, as with `use_admin`. A redaction its sender may
  not make (no redact power level, not in the room) is recorded in `failed_redactions`; the
  job still ends `complete`, as Synapse's does.
* An empty `rooms` means every room the user has a membership in, joined, left or banned
  (Synapse takes joined and banned ones): a spammer who left, or was deactivated, still has
  their messages there. One job per user runs at a time (400 meanwhile), as in Synapse; the
  check is per worker process, where the statuses live.
* The user's events are found through the (room_id, stream_id) index, filtered by sender:
  an occasional admin job, not worth an index that every stored event would pay for.

Statuses live in this worker process only, at most MAX_REDACT_STATUSES of them (the oldest
are forgotten first), and are lost on restart, as room deletions' are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from homeserver.errors import (
    Codes,
    MatrixError,
    bad_json,
    invalid_param,
    missing_param,
    not_found,
    optional_bool,
    optional_str,
)
from homeserver.handlers.admin_jobs import JobTable, new_job_id
from homeserver.handlers.event_creation import EventCreator
from homeserver.handlers.redaction import send_redaction
from homeserver.storage.accounts import AccountStore
from homeserver.storage.events import EventStore, StoredEvent

log = logging.getLogger(__name__)

# The event types Synapse's job redacts (members: joins only, see `_wanted`).
REDACTED_TYPES = ("m.room.member", "m.room.message", "m.room.encrypted")
DEFAULT_LIMIT = 1000
# A room's events are read this many at a time, so a large `limit` costs no memory.
PAGE = 100
# Fewer than room deletions' statuses: each holds its job's failures (one per event at most).
MAX_REDACT_STATUSES = 100


def _optional_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise bad_json(f"{key} must be an integer")
    return value


@dataclass(frozen=True, slots=True)
class RedactJob:
    """A validated request body; an empty `rooms` means every room the user has a membership in."""

    user_id: str
    rooms: tuple[str, ...]
    reason: str | None = None
    limit: int = DEFAULT_LIMIT
    use_admin: bool = False
    after_ts: int | None = None
    before_ts: int | None = None

    @classmethod
    def parse(cls, user_id: str, body: Mapping[str, Any]) -> RedactJob:
        if not user_id.startswith("@") or ":" not in user_id:
            raise invalid_param("Not a user ID")
        rooms = body.get("rooms")
        if rooms is None:
            raise missing_param("rooms")
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise bad_json("rooms must be a list of room IDs")
        if not all(r.startswith("!") for r in rooms):
            raise invalid_param("rooms must be a list of room IDs")
        limit = _optional_int(body, "limit")
        if limit is not None and limit < 1:
            raise invalid_param("limit must be a positive integer")
        after_ts, before_ts = _optional_int(body, "after_ts"), _optional_int(body, "before_ts")
        if after_ts is not None and before_ts is not None and after_ts > before_ts:
            raise invalid_param("after_ts is later than before_ts")
        return cls(
            user_id=user_id,
            rooms=tuple(dict.fromkeys(rooms)),
            reason=optional_str(body, "reason"),
            limit=DEFAULT_LIMIT if limit is None else limit,
            use_admin=optional_bool(body, "use_admin", False),
            after_ts=after_ts,
            before_ts=before_ts,
        )


@dataclass(slots=True)
class RedactStatus:
    redact_id: str
    user_id: str
    status: str = "scheduled"
    error: str | None = None
    failed_redactions: dict[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.status in ("scheduled", "active")

    def to_json(self) -> dict[str, Any]:
        # Synapse's code answers "complete" (its docs say "completed"); tools such as
        # Draupnir read "complete". failed_redactions is always there, even while active.
        out: dict[str, Any] = {"status": self.status, "failed_redactions": dict(self.failed_redactions)}
        if self.error:
            out["error"] = self.error
        return out


class _Interrupted(Exception):
    pass


def _wanted(stored: StoredEvent) -> bool:
    """Not redacted yet, and not a membership other than a join (Synapse keeps those)."""
    event = stored.event
    if stored.redacted_by is not None:
        return False
    return event.type != "m.room.member" or event.membership == "join"


class UserRedactor:
    def __init__(
        self, events: EventStore, creator: EventCreator, accounts: AccountStore, server_name: str
    ) -> None:
        self.events = events
        self.creator = creator
        self.accounts = accounts
        self.server_name = server_name
        self._jobs: JobTable[RedactStatus] = JobTable(MAX_REDACT_STATUSES, "Unknown redact ID")
        self._stopping = False

    def _is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self.server_name)

    async def start(self, admin_id: str, job: RedactJob) -> str:
        """Check the request, start the job in the background and return its redact ID."""
        if self._is_local(job.user_id) and not await self.accounts.user_exists(job.user_id):
            raise not_found("User not found")
        for room_id in job.rooms:
            if await self.events.get_room_version(room_id) is None:
                raise not_found(f"Room not found: {room_id}")
        rooms = job.rooms or await self._rooms_of(job.user_id)
        # No await from this check to the insert: two jobs for one user would redact twice.
        if any(s.user_id == job.user_id and s.running for s in self._jobs.statuses()):
            raise MatrixError(400, Codes.UNKNOWN, f"Redact already in progress for user {job.user_id}")
        status = RedactStatus(new_job_id(), job.user_id)
        self._jobs.start(status.redact_id, status, self._run(status, admin_id, job, rooms))
        log.info("admin %s started redaction %s of %s's events", admin_id, status.redact_id, job.user_id)
        return status.redact_id

    async def _rooms_of(self, user_id: str) -> tuple[str, ...]:
        # Every room the user has a membership in, left and banned included: a spammer who
        # left (or was banned, or deactivated) still has their messages there.
        return tuple(sorted(room for room, _, _, _ in await self.events.get_memberships_for_user(user_id)))

    def status(self, redact_id: str) -> dict[str, Any]:
        return self._jobs.get(redact_id).to_json()

    async def stop(self) -> None:
        """Shutdown: running jobs stop after their current redaction (status "failed")."""
        self._stopping = True
        await self._jobs.wait()

    async def _run(self, status: RedactStatus, admin_id: str, job: RedactJob, rooms: tuple[str, ...]) -> None:
        status.status = "active"
        try:
            for room_id in rooms:
                await self._redact_room(status, admin_id, job, room_id)
            status.status = "complete"
            log.info(
                "redaction %s of %s's events done (%d failed)",
                status.redact_id,
                job.user_id,
                len(status.failed_redactions),
            )
        except _Interrupted:
            status.status, status.error = "failed", "Interrupted: the server is shutting down"
        except Exception as e:
            log.exception("redaction %s of %s's events failed", status.redact_id, job.user_id)
            status.status, status.error = "failed", type(e).__name__

    async def _sender(self, admin_id: str, job: RedactJob, room_id: str) -> str:
        if job.use_admin or not self._is_local(job.user_id):
            return admin_id
        membership = await self.events.get_membership(room_id, job.user_id)
        return job.user_id if membership is not None and membership[0] == "join" else admin_id

    async def _redact_room(self, status: RedactStatus, admin_id: str, job: RedactJob, room_id: str) -> None:
        sender = await self._sender(admin_id, job, room_id)
        looked_at, upto = 0, None
        while looked_at < job.limit:
            page = await self.events.room_events(
                room_id,
                upto=upto,
                limit=min(PAGE, job.limit - looked_at),
                types=REDACTED_TYPES,
                senders=[job.user_id],
                min_ts=job.after_ts,
                max_ts=job.before_ts,
            )
            if not page:
                return
            looked_at += len(page)
            upto = page[-1].stream_id - 1
            for stored in filter(_wanted, page):
                if self._stopping:
                    raise _Interrupted
                try:
                    await send_redaction(
                        self.events, self.creator, room_id, sender, stored.event.event_id, job.reason
                    )
                except MatrixError as e:
                    status.failed_redactions[stored.event.event_id] = e.message
                except Exception as e:
                    log.exception("redacting %s failed", stored.event.event_id)
                    status.failed_redactions[stored.event.event_id] = type(e).__name__
