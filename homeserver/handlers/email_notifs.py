"""Email notifications (Synapse's email pusher), with `email.enable_notifs`.

A user who sets a pusher of kind `email` (its pushkey one of the addresses validated on
their account) is emailed ONE summary of their notifications (the push actions that
notify) that are still unread `email.notif_delay_ms` after they arrived: the rooms, and the
newest few messages in each with their senders' names. Encrypted messages are shown as
"an encrypted message": the server cannot read them.

* A user's position (`email_notif_state`) moves past everything an email covered, and past
  notifications read before they were due, so nothing is emailed twice; a new email needs
  newer notifications. Setting an email pusher starts at the newest position (as Synapse).
* Throttle: at most one email per user per `email.notif_throttle_ms` (Synapse throttles per
  room, with growing intervals; one interval per user is simpler to reason about). Whatever
  arrives meanwhile is in the next email.
* One worker sends (the leader of "email-notifs"); a pass looks at `MAX_USERS_PER_PASS`
  users with news (round robin), `MAX_NOTIFS_PER_EMAIL` notifications in at most
  `MAX_ROOMS_PER_EMAIL` rooms each. A user is due when their oldest unread notification
  past their position is (however many newer ones keep arriving); the email shows the newest.
* A send the SMTP server could not take (unreachable, a timeout, a 4xx reply) is retried on
  a later pass, and the pass stops there (the server is likely down). A message it refuses
  for good (a 5xx reply to the recipient or the content) is not sent again: the user's
  position moves on and the throttle counts it as sent, and the pass goes on.
* A pusher whose address is no longer on the account is removed (Synapse removes it when
  the address is), not mailed.
* "Arrived" is the event's `origin_server_ts`, as recorded with the push action.
* Each email carries an unsubscribe link (in its footer and as `List-Unsubscribe`, with
  `List-Unsubscribe-Post` for RFC 8058's one-click unsubscribe) to Synapse's
  `/_synapse/client/unsubscribe?access_token&app_id&pushkey` (homeserver/api/email_unsubscribe.py),
  which turns that address's email notifications off without signing in. Its token is signed
  (`UnsubscribeLinks`): it works for that user, app ID and pushkey only.
* `email.notif_for_new_users`: an address validated at registration gets an email pusher
  (`pushers_for_new_user`), as Synapse makes one.

Logs name users, never addresses (the mailer logs the domain) or message content. Message
bodies are user input: the HTML part escapes everything it shows.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from homeserver.clock import Clock
from homeserver.config import EmailConfig
from homeserver.handlers.leader_jobs import LeaderService
from homeserver.handlers.mailer import Mailer, MailError
from homeserver.handlers.signed_payloads import PayloadSigner
from homeserver.server import HomeServer
from homeserver.storage.email_notifs import EMAIL_KIND, EmailNotifStore, EmailState, PendingNotification
from homeserver.storage.event_types import StoredEvent
from homeserver.storage.push import PusherStore
from homeserver.storage.threepids import ThreepidStore, email_key

if TYPE_CHECKING:
    from homeserver.handlers.push import PushHandler

log = logging.getLogger(__name__)

MAX_USERS_PER_PASS = 200
MAX_ROOMS_PER_EMAIL = 10
MAX_NOTIFS_PER_EMAIL = 20
# Messages shown per room (the newest); the rest are counted.
MESSAGES_PER_ROOM = 5
MAX_BODY_CHARS = 300
MAX_NAME_CHARS = 80
# A pass runs every notif_delay_ms / 4, within these bounds.
POLL_MIN_S = 0.1
POLL_MAX_S = 60.0
# Synapse's app ID of email pushers, and its unsubscribe link's path.
EMAIL_APP_ID = "m.email"
UNSUBSCRIBE_PATH = "/_synapse/client/unsubscribe"


def _pusher_digest(app_id: str, pushkey: str) -> str:
    digest = hashlib.sha256(f"{app_id}\x00{pushkey}".encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class UnsubscribeLinks:
    """The unsubscribe links of notification emails. The token (Synapse's `access_token`
    parameter, there a macaroon) is a payload naming the user and (by a SHA-256 digest, which
    keeps the link short of a header line's 998 characters) the app ID and pushkey, signed
    with a key derived from the server's signing key (homeserver/handlers/signed_payloads.py,
    so every worker checks it): changing any of them, or the signature, makes it worthless.
    It does not expire (nor does Synapse's); a new signing key voids the links sent before."""

    def __init__(self, signing_key: bytes, baseurl: str) -> None:
        self._signer = PayloadSigner(signing_key, "email unsubscribe")
        self.baseurl = baseurl

    def link(self, user_id: str, app_id: str, pushkey: str) -> str:
        token = self._signer.encode({"u": user_id, "p": _pusher_digest(app_id, pushkey)})
        query = urlencode({"access_token": token, "app_id": app_id, "pushkey": pushkey})
        return f"{self.baseurl}{UNSUBSCRIBE_PATH}?{query}"

    def user_for(self, token: str, app_id: str, pushkey: str) -> str | None:
        """The user the token was made for, if it is ours and for this app ID and pushkey."""
        data = self._signer.decode(token)
        if data is None or data.get("p") != _pusher_digest(app_id, pushkey):
            return None
        user_id = data.get("u")
        return user_id if isinstance(user_id, str) else None


# A header line may hold 998 characters (RFC 5322); the header is written unfolded.
MAX_HEADER_LINE = 998


def unsubscribe_headers(link: str) -> dict[str, str]:
    """RFC 2369's `List-Unsubscribe` and, for an https link only (RFC 8058 requires it), the
    one-click `List-Unsubscribe-Post`. None when the line would be too long for SMTP (a long
    app ID and address): the link in the email's footer still works."""
    header = f"<{link}>"
    if len("List-Unsubscribe: ") + len(header) > MAX_HEADER_LINE:
        return {}
    out = {"List-Unsubscribe": header}
    if link.startswith("https://"):
        out["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return out


def new_user_pusher(address: str) -> dict[str, Any]:
    """The email pusher Synapse sets for an address given at registration."""
    return {
        "kind": "email",
        "app_id": EMAIL_APP_ID,
        "pushkey": address,
        "app_display_name": "Email Notifications",
        "device_display_name": address,
        "lang": "en",
        "data": {},
    }


async def pushers_for_new_user(push: PushHandler, user_id: str) -> None:
    """`email.notif_for_new_users`: an email pusher for each address of a new account (its
    address from the registration's email stage). Not tied to a device: signing out of the
    device that registered keeps it. A failure is logged: the account exists either way."""
    try:
        threepids = push.threepids
        owned = await threepids.of_user(user_id) if threepids else []
        addresses = [t.address for t in owned if t.medium == "email"]
        for address in addresses:
            await push.set_pusher(user_id, None, new_user_pusher(address))
        if addresses:
            log.info("turned on email notifications for the new user %s", user_id)
    except Exception as e:
        # The type only: a database error's message carries its values (the address).
        log.warning(
            "could not turn on email notifications for the new user %s: %s", user_id, type(e).__name__
        )


@dataclass(slots=True, frozen=True)
class MessageLine:
    sender: str
    text: str
    link: str


@dataclass(slots=True)
class RoomSummary:
    name: str
    # The room's own name (m.room.name or alias); False when made of its senders' names.
    named: bool
    link: str
    messages: list[MessageLine] = field(default_factory=list)
    more: int = 0
    senders: list[str] = field(default_factory=list)
    invite: bool = False


@dataclass(slots=True, frozen=True)
class Email:
    subject: str
    text: str
    html: str


def _one_line(value: str, limit: int) -> str:
    flat = " ".join(value.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# Attachments are named, not described by their body (a file name).
_ATTACHMENTS = {
    "m.image": "an image",
    "m.file": "a file",
    "m.video": "a video",
    "m.audio": "an audio message",
}


def describe(event: Any, user_id: str) -> str:
    """What a notification says, in plain text: a message's body, never an encrypted one's."""
    if event.type == "m.room.encrypted":
        return "an encrypted message"
    content = event.content
    if event.type == "m.room.member":
        if content.get("membership") == "invite" and event.state_key == user_id:
            return "invited you"
        return "changed their membership"
    if event.type == "m.sticker":
        return "sent a sticker"
    if event.type == "m.room.message":
        kind = _ATTACHMENTS.get(content.get("msgtype"))
        if kind is not None:
            return f"sent {kind}"
        body = content.get("body")
        if isinstance(body, str) and body.strip():
            return _one_line(body, MAX_BODY_CHARS)
        return "sent a message"
    return "sent an event"


def room_link(base: str, room_id: str, event_id: str | None = None) -> str:
    link = f"{base}/#/room/{quote(room_id, safe='!:@')}"
    return link + f"/{quote(event_id, safe='$:@')}" if event_id else link


def _names(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"{names[0]} and {names[1]}"
    return f"{names[0]} and {len(names) - 1} others"


def subject_for(app: str, rooms: list[RoomSummary]) -> str:
    """As Synapse words its subjects (the most recent room first)."""
    first = rooms[0]
    if len(rooms) == 1:
        if first.invite:
            return f"[{app}] You have been invited to the {first.name} room on {app}"
        one_sender = len(first.senders) == 1
        count = len(first.messages) + first.more
        what = "a message" if count == 1 else "messages"
        if one_sender and first.named:
            return f"[{app}] You have {what} on {app} from {first.senders[0]} in the {first.name} room..."
        if one_sender:
            return f"[{app}] You have {what} on {app} from {first.senders[0]}..."
        if first.named:
            return f"[{app}] You have messages on {app} in the {first.name} room..."
        return f"[{app}] You have messages on {app} from {_names(first.senders)}..."
    if first.named:
        return f"[{app}] You have messages on {app} in the {first.name} room and others..."
    return f"[{app}] You have messages on {app} from {first.senders[0]} and others..."


def compose(
    app: str, user_name: str, client_url: str, rooms: list[RoomSummary], unsubscribe: str | None = None
) -> Email:
    """The summary email (text and HTML) for `rooms`, most recent first; `unsubscribe`: the
    link that turns these emails off."""
    total = sum(len(r.messages) + r.more for r in rooms)
    intro = f"You have {total} unread notification{'s' if total != 1 else ''} on {app}."
    footer = (
        f"You are receiving this email because email notifications are on for your {app} account. "
        "You can turn them off in your client's notification settings"
        + (", or with the unsubscribe link below." if unsubscribe else ".")
    )
    text = [f"Hi {user_name},", "", intro, ""]
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"></head><body>',
        f"<p>Hi {html.escape(user_name)},</p>",
        f"<p>{html.escape(intro)}</p>",
    ]
    for room in rooms:
        text.append(room.name)
        parts.append(f'<h3><a href="{html.escape(room.link)}">{html.escape(room.name)}</a></h3><ul>')
        for m in room.messages:
            text.append(f"  {m.sender}: {m.text}")
            parts.append(
                f'<li><a href="{html.escape(m.link)}"><b>{html.escape(m.sender)}</b></a>: '
                f"{html.escape(m.text)}</li>"
            )
        if room.more:
            text.append(f"  … and {room.more} more")
            parts.append(f"<li>… and {room.more} more</li>")
        text += [f"  Open: {room.link}", ""]
        parts.append("</ul>")
    text += [f"Open {app}: {client_url}", "", footer]
    parts += [
        f'<p><a href="{html.escape(client_url)}">Open {html.escape(app)}</a></p>',
        f"<p><small>{html.escape(footer)}</small></p>",
    ]
    if unsubscribe:
        text.append(f"Unsubscribe: {unsubscribe}")
        parts.append(f'<p><small><a href="{html.escape(unsubscribe)}">Unsubscribe</a></small></p>')
    parts.append("</body></html>")
    return Email(_one_line(subject_for(app, rooms), 200), "\n".join(text) + "\n", "\n".join(parts) + "\n")


def poll_interval_s(delay_ms: int) -> float:
    return min(POLL_MAX_S, max(POLL_MIN_S, delay_ms / 4000))


class EmailNotifier(LeaderService):
    """The sender (a background service of `hs.background`): `run_once` is one pass; while
    this worker leads "email-notifs" a pass runs every `poll_interval_s`."""

    def __init__(
        self,
        hs: HomeServer,
        store: EmailNotifStore,
        pusher_store: PusherStore,
        threepids: ThreepidStore,
        mailer: Mailer,
        config: EmailConfig,
    ) -> None:
        super().__init__(hs, "email-notifs")
        self.store = store
        self.pushers = pusher_store
        self.threepids = threepids
        self.mailer = mailer
        self.config = config
        self.events = hs.events
        self.accounts = hs.accounts
        self.clock: Clock = hs.clock
        self.interval_s = poll_interval_s(config.notif_delay_ms)
        self.links = UnsubscribeLinks(bytes(hs.signing_key), hs.config.baseurl)
        self.sent = 0
        self._cursor = ""
        # One pass at a time (a test's run_once and the timer's).
        self._lock = asyncio.Lock()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self.leader.is_leader:
                try:
                    await self.run_once()
                except Exception:
                    log.exception("email notifications: the pass failed")

    async def run_once(self) -> int:
        """One pass; returns how many emails were sent."""
        async with self._lock:
            now = self.clock.time_ms()
            upto = await self.hs.db.refresh_stream_position()
            users = await self.store.users_with_news(
                self._cursor, now - self.config.notif_throttle_ms, MAX_USERS_PER_PASS
            )
            self._cursor = users[-1].user_id if len(users) == MAX_USERS_PER_PASS else ""
            sent = 0
            for state in users:
                try:
                    sent += await self._user(state, now, upto)
                except MailError:
                    break  # the server may be down: tried again on a later pass
            self.sent += sent
            return sent

    async def _user(self, state: EmailState, now: int, upto: int) -> int:
        user_id = state.user_id
        rooms = {r for r, membership, _, _ in await self.events.get_memberships_for_user(user_id)
                 if membership in ("join", "invite")}  # fmt: skip
        # Due by the oldest unread notification: the newest ones shown below may keep
        # arriving within the delay while a room is busy.
        oldest = await self.store.oldest_pending_ts(user_id, rooms, state.last_stream_id, upto)
        if oldest is not None and oldest + self.config.notif_delay_ms > now:
            return 0  # none due yet; a read receipt may still come
        pending = (
            []
            if oldest is None
            else await self.store.pending(
                user_id, rooms, state.last_stream_id, upto, MAX_ROOMS_PER_EMAIL, MAX_NOTIFS_PER_EMAIL
            )
        )
        if not pending:
            # Read, or in rooms the user left: nothing to email up to here.
            await self.store.advance(user_id, state.last_stream_id, upto, None)
            return 0
        addresses = await self._addresses(user_id)
        if not addresses:
            await self.store.advance(user_id, state.last_stream_id, upto, None)
            return 0
        summary = await self._summary(user_id, pending)
        if summary is None:
            await self.store.advance(user_id, state.last_stream_id, upto, None)
            return 0
        user_name, room_summaries = summary
        sent = 0
        retry: MailError | None = None
        for address, app_id, pushkey in addresses:
            # One unsubscribe link per address (its pusher).
            link = self.links.link(user_id, app_id, pushkey)
            email = compose(
                self.config.app_name, user_name, self.config.client_base_url, room_summaries, link
            )
            try:
                await self.mailer.send(
                    address, email.subject, email.text, email.html, unsubscribe_headers(link)
                )
                sent += 1
            except MailError as e:
                if not e.permanent:
                    retry = e
        if sent:
            # Everything up to `upto` is covered: the email listed the newest, and older
            # unread ones past the bounds are not worth a second email.
            await self.store.advance(user_id, state.last_stream_id, upto, now)
            log.info("emailed %s about %d notifications", user_id, len(pending))
        elif retry is not None:
            raise retry
        else:
            # Refused for good at every address: as if sent (position and throttle), so
            # it is not offered again each pass nor holds up the users after this one.
            await self.store.advance(user_id, state.last_stream_id, upto, now)
            log.info("the email to %s about %d notifications was refused", user_id, len(pending))
        return sent

    async def _addresses(self, user_id: str) -> list[tuple[str, str, str]]:
        """(address, app ID, pushkey) of the user's email pushers whose address is still
        validated on the account, one per address; pushers of other addresses are removed."""
        owned = {t.address for t in await self.threepids.of_user(user_id) if t.medium == "email"}
        out: dict[str, tuple[str, str, str]] = {}
        for pusher in await self.pushers.for_user(user_id):
            if pusher.kind != EMAIL_KIND:
                continue
            address = email_key(pusher.pushkey)  # the address as validated, not as typed
            if address in owned:
                out.setdefault(address, (address, pusher.app_id, pusher.pushkey))
            else:
                await self.pushers.delete(user_id, pusher.app_id, pusher.pushkey)
                log.info("removed an email pusher of %s: its address is no longer on the account", user_id)
        return list(out.values())

    async def _summary(
        self, user_id: str, pending: list[PendingNotification]
    ) -> tuple[str, list[RoomSummary]] | None:
        """The user's name and the rooms to show, for `compose`; None if none is left."""
        stored = await self.events.get_events([n.event_id for n in pending])
        base = self.config.client_base_url
        by_room: dict[str, list[tuple[PendingNotification, StoredEvent]]] = {}
        for n in pending:  # newest first, so rooms come most recent first
            s = stored.get(n.event_id)
            if s is not None:
                by_room.setdefault(n.room_id, []).append((n, s))
        if not by_room:
            return None
        rooms = []
        for room_id, items in by_room.items():
            senders = list(dict.fromkeys(s.event.sender for _, s in items))
            keys = [("m.room.name", ""), ("m.room.canonical_alias", "")]
            state = await self.events.get_current_state(
                room_id, keys + [("m.room.member", u) for u in senders]
            )
            names = {u: _state_str(state.get(("m.room.member", u)), "displayname") or u for u in senders}
            names = {u: _one_line(n, MAX_NAME_CHARS) for u, n in names.items()}
            own = _state_str(state.get(("m.room.name", "")), "name") or _state_str(
                state.get(("m.room.canonical_alias", "")), "alias"
            )
            summary = RoomSummary(
                name=_one_line(own, MAX_NAME_CHARS) if own else _names(list(names.values())),
                named=bool(own),
                link=room_link(base, room_id),
                senders=[names[u] for u in senders],
            )
            shown = items[:MESSAGES_PER_ROOM]
            summary.more = len(items) - len(shown)
            for n, s in reversed(shown):  # oldest first, as a conversation reads
                text = describe(s.event, user_id)
                summary.invite = summary.invite or text == "invited you"
                summary.messages.append(
                    MessageLine(names[s.event.sender], text, room_link(base, room_id, n.event_id))
                )
            rooms.append(summary)
        profile = await self.accounts.get_profile(user_id)
        user_name = (profile[0] if profile and profile[0] else None) or user_id.partition(":")[0].lstrip("@")
        return _one_line(user_name, MAX_NAME_CHARS), rooms


def _state_str(stored: StoredEvent | None, key: str) -> str | None:
    if stored is None:
        return None
    value = stored.event.content.get(key)
    return value if isinstance(value, str) and value.strip() else None
