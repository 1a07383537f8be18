"""Typing notifications (in memory, with timeouts) and read receipts.

Typing state never touches the database: it lives here with expiry times,
and each change bumps the notifier's ephemeral serial so syncs can tell what
changed since their token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.storage.events import EventStore
from homeserver.storage.receipts import Receipt, ReceiptStore
from homeserver.sync.notifier import Notifier

MAX_TYPING_TIMEOUT_MS = 120_000
RECEIPT_TYPES = ("m.read", "m.read.private", "m.fully_read")

# Federation (bridge/) subscribes to send typing and receipts to remote servers.
EduListener = Callable[[str, dict[str, Any]], Awaitable[None]]


class TypingHandler:
    def __init__(self, notifier: Notifier, clock: Clock) -> None:
        self.notifier = notifier
        self.clock = clock
        # room_id -> {user_id: expiry_ms}; room_id -> ephemeral serial of its last change.
        self._typing: dict[str, dict[str, int]] = {}
        self._serial: dict[str, int] = {}
        self.listeners: list[EduListener] = []

    def _expire(self, room_id: str) -> bool:
        now = self.clock.time_ms()
        users = self._typing.get(room_id)
        if not users:
            return False
        expired = [u for u, exp in users.items() if exp <= now]
        for u in expired:
            del users[u]
        if not users:
            del self._typing[room_id]
        return bool(expired)

    async def set_typing(
        self, room_id: str, user_id: str, typing: bool, timeout_ms: int, local: bool = True
    ) -> None:
        self._expire(room_id)
        users = self._typing.setdefault(room_id, {})
        was = user_id in users
        if typing:
            users[user_id] = self.clock.time_ms() + min(max(timeout_ms, 0), MAX_TYPING_TIMEOUT_MS)
        else:
            users.pop(user_id, None)
        if not users:
            self._typing.pop(room_id, None)
        if was != typing or typing:
            self._serial[room_id] = self.notifier.bump_ephemeral()
            self.notifier.notify(rooms=[room_id])
        if local:
            for listener in self.listeners:
                await listener("m.typing", {"room_id": room_id, "user_id": user_id, "typing": typing})

    def typing_users(self, room_id: str) -> list[str]:
        if self._expire(room_id):
            self._serial[room_id] = self.notifier.bump_ephemeral()
        return sorted(self._typing.get(room_id, {}))

    def changed_since(self, room_id: str, serial: int) -> bool:
        # Expired typers count as a change, so the stop is delivered.
        if self._expire(room_id):
            self._serial[room_id] = self.notifier.bump_ephemeral()
        return self._serial.get(room_id, 0) > serial


class ReceiptHandler:
    def __init__(self, store: ReceiptStore, events: EventStore, notifier: Notifier, clock: Clock) -> None:
        self.store = store
        self.events = events
        self.notifier = notifier
        self.clock = clock
        self.listeners: list[EduListener] = []

    async def post_receipt(
        self,
        user_id: str,
        room_id: str,
        receipt_type: str,
        event_id: str,
        thread_id: str | None = None,
        ts: int | None = None,
        local: bool = True,
    ) -> None:
        if receipt_type not in RECEIPT_TYPES:
            raise MatrixError(400, Codes.INVALID_PARAM, "Unknown receipt type")
        stored = await self.events.get_event(event_id)
        if stored is None or stored.event.room_id != room_id:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown event")
        ts = ts if ts is not None else self.clock.time_ms()
        await self.store.upsert(Receipt(room_id, receipt_type, user_id, thread_id or "", event_id, ts))
        self.notifier.notify(rooms=[room_id], users=[user_id])
        if local and receipt_type == "m.read":
            for listener in self.listeners:
                await listener(
                    "m.receipt",
                    {
                        "room_id": room_id,
                        "user_id": user_id,
                        "event_id": event_id,
                        "ts": ts,
                        "thread_id": thread_id,
                    },
                )


def receipts_to_edu_content(receipts: list[Receipt], viewer: str) -> dict[str, Any]:
    """Group receipts into an m.receipt event's content; private receipts only for their owner."""
    content: dict[str, Any] = {}
    for r in receipts:
        if r.receipt_type == "m.fully_read":
            continue
        if r.receipt_type == "m.read.private" and r.user_id != viewer:
            continue
        data: dict[str, Any] = {"ts": r.ts}
        if r.thread_id:
            data["thread_id"] = r.thread_id
        content.setdefault(r.event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = data
    return content
