"""Re-consent to changed terms (Synapse's `user_consent`, on Sotto's `registration.terms`).

Accounts record the version of the terms they accepted (`users.consent_version`). When the
operator publishes a new `registration.terms.version`, or for accounts that never accepted
any (made by single sign-on, the admin API, before the terms existed):

- `block_events_until_consent`: `ConsentHandler.check_event` is the event creator's
  `consent` hook. A local sender who has not accepted the current version is refused with
  403 `M_CONSENT_NOT_GIVEN`, an `error` naming their consent page and its `consent_uri`
  (Synapse's ConsentNotGivenError), for every event: messages, state, invites, joins, room
  creation. Exempt: the server notices user, application service users (a service's bot and
  its exclusive namespaces), leaving a room, and anything in a server notices room (joined by
  the server notices user), so the user can join it and read the notice. Reads, /sync and
  receipts are untouched.
- `server_notice`: `ConsentNotices`, a /sync extension (and a park hook, for sliding sync),
  sends a user who syncs without having accepted the current version one server notice
  (m.text, `%(consent_uri)s` replaced by their link) per version
  (`users.consent_server_notice_sent`, claimed in one statement first, so across restarts
  and workers it goes once). Not to guests (Synapse's default).
- The consent page (homeserver/api/consent.py) at `/_matrix/consent?u=<localpart>&h=<mac>`;
  `h` is an HMAC of the user ID with a key derived from the server's signing key
  (homeserver/handlers/signed_payloads.py, purpose "user consent"), so every worker makes and
  checks the same links, and a new signing key voids the old ones.

The hot path: with blocking off the hook is not installed. With it on, a sender found to have
accepted the current version (or exempt) is remembered in a set kept for that version only,
so each later event costs a set lookup; a miss reads the database once. Only "has accepted"
is cached (acceptance is never withdrawn), so no worker's cache can go stale: a user who
accepts on one worker is found in the database by the others on their next miss.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlencode

from homeserver.appservice.registration import AppServices
from homeserver.clock import Clock
from homeserver.config import Config, TermsConfig
from homeserver.errors import MatrixError
from homeserver.handlers.acting import acting
from homeserver.handlers.auth import Requester
from homeserver.handlers.rooms import RoomHandler
from homeserver.handlers.server_notices import ServerNotices
from homeserver.handlers.signed_payloads import PayloadSigner
from homeserver.storage.accounts import AccountStore
from homeserver.storage.events import EventStore

log = logging.getLogger(__name__)

CONSENT_PATH = "/_matrix/consent"
CONSENT_NOT_GIVEN = "M_CONSENT_NOT_GIVEN"
# Synapse's example `block_events_error`.
BLOCKED = "To continue using this homeserver you must review and agree to the terms and conditions at %s"
URI_PLACEHOLDER = "%(consent_uri)s"
# Users remembered per set (accepted the current version, sent its notice): past this the set
# starts again (each user then costs one more database read).
MAX_KNOWN = 100_000
# At shutdown, notices being sent get this long to finish.
STOP_WAIT_S = 5.0


class ConsentHandler:
    """Links to the consent page, the event creator's hook, and recording an acceptance."""

    def __init__(
        self,
        config: Config,
        accounts: AccountStore,
        events: EventStore,
        appservices: AppServices,
        clock: Clock,
        signing_key: bytes,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.events = events
        self.appservices = appservices
        self.clock = clock
        self.server_name = config.server_name
        self._suffix = ":" + config.server_name
        localpart = config.server_notices.localpart
        self.system_user = f"@{localpart}:{config.server_name}" if localpart else None
        self._macs = PayloadSigner(signing_key, "user consent")
        # The terms version `_ok` is for, and the users known to have accepted it (or exempt).
        self._version: str | None = None
        self._ok: set[str] = set()

    @property
    def terms(self) -> TermsConfig | None:
        return self.config.registration.terms

    # Links ---------------------------------------------------------------------------------

    def _mac(self, user_id: str) -> str:
        # The signature part of a signed payload naming the user: an HMAC of the user ID.
        return self._macs.encode({"u": user_id}).rpartition(".")[2]

    def link(self, user_id: str) -> str:
        """The user's consent page: `<public_baseurl>/_matrix/consent?u=<localpart>&h=<mac>`."""
        localpart = user_id[1:].split(":", 1)[0]  # a localpart has no ":"; a server name may
        query = urlencode({"u": localpart, "h": self._mac(user_id)})
        return f"{self.config.baseurl}{CONSENT_PATH}?{query}"

    def user_for_link(self, u: str | None, h: str | None) -> str | None:
        """The local user a link's `u` (localpart or user ID) names, if `h` is its MAC."""
        if not u or not h:
            return None
        user_id = u if u.startswith("@") else f"@{u}{self._suffix}"
        if not user_id.endswith(self._suffix):
            return None
        expected = self._mac(user_id).encode()
        if not hmac.compare_digest(expected, h.encode("utf-8", "surrogateescape")):
            return None
        return user_id

    # Who has accepted ------------------------------------------------------------------------

    def _known(self, version: str) -> set[str]:
        if version != self._version:
            self._version, self._ok = version, set()
        return self._ok

    def remember(self, version: str, user_id: str) -> None:
        known = self._known(version)
        if len(known) >= MAX_KNOWN:
            known.clear()
        known.add(user_id)

    def is_known(self, version: str, user_id: str) -> bool:
        return version == self._version and user_id in self._ok

    def exempt_user(self, user_id: str) -> bool:
        """Never asked: the server notices user, application services' users."""
        return user_id == self.system_user or self.appservices.user_claimed_by(user_id) is not None

    async def has_consented(self, version: str, user_id: str) -> bool:
        """Whether the local user accepted `version` or is exempt (remembered if so); an
        unknown or deactivated account is let through (it sends nothing of its own)."""
        if self.is_known(version, user_id):
            return True
        if self.exempt_user(user_id):
            self.remember(version, user_id)
            return True
        state = await self.accounts.get_consent(user_id)
        if state is None:
            return True
        if state[0] == version:
            self.remember(version, user_id)
            return True
        return False

    async def record(self, user_id: str, version: str) -> bool:
        """The user accepted `version` (the consent page): recorded now, and their events are
        let through at once (here; other workers read it on their next look)."""
        if not await self.accounts.set_consent(user_id, version, self.clock.time_ms()):
            return False
        self.remember(version, user_id)
        log.info("%s accepted the terms, version %s", user_id, version)
        return True

    def not_given(self, user_id: str) -> MatrixError:
        uri = self.link(user_id)
        return MatrixError(403, CONSENT_NOT_GIVEN, BLOCKED % uri, consent_uri=uri)

    # The event creator's hook ----------------------------------------------------------------

    def check_event(
        self, sender: str, room_id: str | None, type: str, state_key: str | None, content: dict[str, Any]
    ) -> Awaitable[None] | None:
        """None if the event may go (blocking off, or a sender known to have accepted), else
        the check to await, which raises 403 M_CONSENT_NOT_GIVEN to refuse it."""
        terms = self.config.registration.terms
        if terms is None or not terms.block_events_until_consent:
            return None
        if terms.version == self._version and sender in self._ok:
            return None
        if acting() is not None:
            return None  # a server admin or an application service acting as the user (Synapse)
        return self._check_event(terms.version, sender, room_id, type, state_key, content)

    async def _check_event(
        self,
        version: str,
        sender: str,
        room_id: str | None,
        type: str,
        state_key: str | None,
        content: dict[str, Any],
    ) -> None:
        if not sender.endswith(self._suffix) or await self.has_consented(version, sender):
            return
        if type == "m.room.member" and state_key == sender and content.get("membership") == "leave":
            return  # leaving is always allowed (as Synapse)
        if room_id is not None and self.system_user is not None:
            # The user's server notices room (the server notices user is in no other room):
            # they may join it, and act in it, to read the notice.
            membership = await self.events.get_membership(room_id, self.system_user)
            if membership is not None and membership[0] == "join":
                return
        raise self.not_given(sender)


def guard_remote_membership(rooms: RoomHandler, consent: ConsentHandler) -> None:
    """Joins, invites and knocks that go over federation build their events without the event
    creator: ask the same question first. `rooms.join` is wrapped as a whole (federation
    wraps it too, and joins some rooms over federation from there); a local join is asked
    again in the event creator, which costs a set lookup."""
    original_join = rooms.join

    async def join(
        user_id: str,
        room_id_or_alias: str,
        servers: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        room_id = room_id_or_alias if room_id_or_alias.startswith("!") else None
        refusal = consent.check_event(user_id, room_id, "m.room.member", user_id, {"membership": "join"})
        if refusal is not None:
            await refusal
        return await original_join(user_id, room_id_or_alias, servers, extra)

    rooms.join = join  # type: ignore[method-assign]

    remote_invite = rooms.remote_invite
    if remote_invite is not None:

        async def invite(sender: str, room_id: str, target: str, extra: dict[str, Any]) -> None:
            refusal = consent.check_event(sender, room_id, "m.room.member", target, {"membership": "invite"})
            if refusal is not None:
                await refusal
            assert remote_invite is not None
            await remote_invite(sender, room_id, target, extra)

        rooms.remote_invite = invite

    remote_knock = rooms.remote_knock
    if remote_knock is not None:

        async def knock(user_id: str, room_id: str, servers: list[str], extra: dict[str, Any]) -> str:
            refusal = consent.check_event(user_id, room_id, "m.room.member", user_id, {"membership": "knock"})
            if refusal is not None:
                await refusal
            assert remote_knock is not None
            return await remote_knock(user_id, room_id, servers, extra)

        rooms.remote_knock = knock


class ConsentNotices:
    """The server notice about the current terms, once per version to each user who syncs
    without having accepted them: a /sync extension (`sync_fields`) that sends it in the
    background, and a background service (its `stop` lets notices under way finish)."""

    def __init__(self, consent: ConsentHandler, notices: ServerNotices) -> None:
        self.consent = consent
        self.accounts = consent.accounts
        self.notices = notices
        # The version `_noticed` is for, and the users not to send its notice to (sent, or
        # guests); users whose notice is being sent.
        self._version: str | None = None
        self._noticed: set[str] = set()
        self._sending: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.settled(STOP_WAIT_S)

    async def settled(self, timeout: float | None = None) -> None:
        """Wait for the notices being sent now (at most `timeout` seconds)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def sync_fields(
        self,
        requester: Requester,
        since: int | None,
        upto: int,
        joined_room_ids: list[str],
        response: dict[str, Any],
    ) -> None:
        self.user_syncing(requester)

    def user_syncing(self, requester: Requester) -> None:
        if not requester.is_guest:
            self._syncing(requester.user_id)

    async def on_request(self, user_id: str, _set_presence: str | None) -> None:
        """A park hook (homeserver.sync.handler): sliding sync requests, which Element X
        makes instead of /sync, count as syncing too (guests are left out when sending)."""
        self._syncing(user_id)

    def _syncing(self, user_id: str) -> None:
        terms = self.consent.terms
        if terms is None or terms.server_notice is None:
            return
        version = terms.version
        if self.consent.is_known(version, user_id) or user_id in self._sending:
            return
        if version != self._version:
            self._version, self._noticed = version, set()
        if user_id in self._noticed:
            return
        self._sending.add(user_id)
        task = asyncio.get_running_loop().create_task(self._maybe_send(user_id, terms))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _done(self, version: str, user_id: str) -> None:
        if version == self._version:
            if len(self._noticed) >= MAX_KNOWN:
                self._noticed.clear()
            self._noticed.add(user_id)

    async def _maybe_send(self, user_id: str, terms: TermsConfig) -> None:
        version, text = terms.version, terms.server_notice
        assert text is not None
        try:
            if await self.consent.has_consented(version, user_id):
                return
            state = await self.accounts.get_consent(user_id)
            if state is None:
                return
            _, sent, is_guest = state
            if sent == version or is_guest:
                self._done(version, user_id)
                return
            if not await self.accounts.claim_consent_notice(user_id, version):
                self._done(version, user_id)  # sent (by another worker), or just accepted
                return
            body = text.replace(URI_PLACEHOLDER, self.consent.link(user_id))
            try:
                await self.notices.send(user_id, {"msgtype": "m.text", "body": body})
            except Exception:
                log.exception("could not send the terms' server notice to %s", user_id)
                await self.accounts.release_consent_notice(user_id, version)
                return
            self._done(version, user_id)
            log.info("sent %s the server notice about the terms, version %s", user_id, version)
        except Exception:
            log.exception("consent server notice for %s", user_id)
        finally:
            self._sending.discard(user_id)
