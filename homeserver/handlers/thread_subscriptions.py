"""Thread subscriptions (MSC4306, unstable `io.element.msc4306`, as Synapse 1.163 speaks
them): a user subscribes to a thread, by hand or automatically (their client decided, on
an event of the thread: `automatic` names it), and unsubscribes. Push then notifies a
thread's subscribers of its replies and nobody else (the default rules in push_rules.py;
the condition in push_eval.py), and sliding sync's MSC4308 extension tells the user's other
clients (homeserver/sync/sliding/thread_subscriptions.py).

Semantics and errors are Synapse's: the thread root must be an event of the room the user
may see (404 otherwise); it need not have replies yet. An automatic subscription's cause
must be a visible event of the room (404 when unknown, 403 when hidden) in that thread
(400 `IO.ELEMENT.MSC4306.M_NOT_IN_THREAD`), and is refused with 409
`IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION` when the user unsubscribed after it (the
store's rule). A change wakes the user's long-polls; a request that changes nothing is a
no-op.
"""

from __future__ import annotations

from typing import Any

from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.handlers.messages import MessageHandler, Window
from homeserver.storage.event_types import StoredEvent
from homeserver.storage.events import EventStore
from homeserver.storage.thread_subscriptions import Change, Conflicted, Orderings, ThreadSubscriptionStore
from homeserver.sync.notifier import Notifier

NOT_IN_THREAD = "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD"
CONFLICTING_UNSUBSCRIPTION = "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION"
# /versions.
FEATURE = "org.matrix.msc4306"


class ThreadSubscriptionsHandler:
    def __init__(
        self, store: ThreadSubscriptionStore, events: EventStore, messages: MessageHandler, notifier: Notifier
    ) -> None:
        self.store = store
        self.events = events
        self.messages = messages
        self.notifier = notifier

    async def _visible(self, user_id: str, room_id: str, event_id: str) -> StoredEvent | None:
        """The event if it is in the room and the user may see it; None if not in the room
        (or unknown). Raises 403 when it exists but is hidden from the user."""
        stored = await self.events.get_event(event_id)
        if stored is None or stored.event.room_id != room_id:
            return None
        try:
            window: Window = await self.messages.visible_window(room_id, user_id)
        except MatrixError as e:
            if e.status == 404:
                return None
            raise forbidden("You don't have permission to access that event.") from None
        if stored.stream_id > window.upper or (
            window.lower is not None and stored.stream_id < window.lower and not stored.event.is_state()
        ):
            raise forbidden("You don't have permission to access that event.")
        return stored

    async def _thread_root(self, user_id: str, room_id: str, root_id: str) -> StoredEvent:
        try:
            root = await self._visible(user_id, room_id, root_id)
        except MatrixError:
            root = None
        if root is None:
            raise not_found("No such thread root")
        return root

    async def get(self, user_id: str, room_id: str, root_id: str) -> dict[str, Any]:
        await self._thread_root(user_id, room_id, root_id)
        automatic = await self.store.get(user_id, room_id, root_id)
        if automatic is None:
            raise not_found("Not subscribed.")
        return {"automatic": automatic}

    async def subscribe(self, user_id: str, room_id: str, root_id: str, automatic: str | None) -> int | None:
        """The change's stream position (None: nothing changed)."""
        await self._thread_root(user_id, room_id, root_id)
        cause: Orderings | None = None
        if automatic:
            # As Synapse: unknown is 404, hidden 403 (its AuthError is not caught here).
            found = await self._visible(user_id, room_id, automatic)
            if found is None:
                raise not_found("Automatic subscription event not found")
            rel = found.event.content.get("m.relates_to")
            if not (
                isinstance(rel, dict) and rel.get("rel_type") == "m.thread" and rel.get("event_id") == root_id
            ):
                raise MatrixError(
                    400, NOT_IN_THREAD, "Automatic subscription must use an event in the thread"
                )
            cause = Orderings(found.stream_id, found.event.depth)
        outcome = await self.store.subscribe(user_id, room_id, root_id, cause)
        if isinstance(outcome, Conflicted):
            raise MatrixError(
                409,
                CONFLICTING_UNSUBSCRIPTION,
                "Automatic subscription obsoleted by an unsubscription request.",
            )
        if outcome is not None:
            self.notifier.notify(users=[user_id])
        return outcome

    async def unsubscribe(self, user_id: str, room_id: str, root_id: str) -> int | None:
        await self._thread_root(user_id, room_id, root_id)
        outcome = await self.store.unsubscribe(user_id, room_id, root_id)
        if outcome is not None:
            self.notifier.notify(users=[user_id])
        return outcome

    async def changes(self, user_id: str, after: int, upto: int, limit: int) -> list[Change]:
        return await self.store.changes(user_id, after, upto, limit)


def changes_json(changes: list[Change]) -> dict[str, Any]:
    """MSC4308's `subscribed` and `unsubscribed` maps (room -> thread root -> change), each
    present only when not empty; `bump_stamp` is the change's stream position."""
    subscribed: dict[str, dict[str, Any]] = {}
    unsubscribed: dict[str, dict[str, Any]] = {}
    for c in changes:
        if c.subscribed:
            subscribed.setdefault(c.room_id, {})[c.thread_root_id] = {
                "automatic": c.automatic,
                "bump_stamp": c.stream_id,
            }
        else:
            unsubscribed.setdefault(c.room_id, {})[c.thread_root_id] = {"bump_stamp": c.stream_id}
    out: dict[str, Any] = {}
    if subscribed:
        out["subscribed"] = subscribed
    if unsubscribed:
        out["unsubscribed"] = unsubscribed
    return out


def token(stream_id: int) -> str:
    """A position in the thread subscriptions stream, as Synapse writes it."""
    return f"ts{stream_id}"


def parse_token(raw: str) -> int | None:
    if not raw.startswith("ts"):
        return None
    try:
        return int(raw[2:])
    except ValueError:
        return None
