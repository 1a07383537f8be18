"""Typing notifications (in memory, with timeouts) and read receipts.

Typing state never touches the database: it lives here with expiry times,
and each change bumps the notifier's ephemeral serial so syncs can tell what
changed since their token. With several workers every change is also broadcast to
the others (the `typing` topic of homeserver.invalidation), which apply it to their
own copy, so a user typing on one worker is seen by syncs on every worker.

Serials are wall-clock milliseconds (or one above the last, if that is later), so the
serial in a sync token means the same on every worker and across restarts: a token
made on one worker and used on another neither misses nor, for long, repeats changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.invalidation import Invalidations
from homeserver.storage.events import EventStore
from homeserver.storage.receipts import Receipt, ReceiptStore
from homeserver.sync.notifier import Notifier

MAX_TYPING_TIMEOUT_MS = 120_000
# Typing changes made on one worker, applied by the others.
TYPING_TOPIC = "typing"
RECEIPT_TYPES = ("m.read", "m.read.private", "m.fully_read")

# Federation (bridge/) subscribes to send typing and receipts to remote servers.
EduListener = Callable[[str, dict[str, Any]], Awaitable[None]]


class TypingHandler:
    def __init__(self, notifier: Notifier, clock: Clock, peers: Invalidations | None = None) -> None:
        self.notifier = notifier
        self.clock = clock
        # room_id -> {user_id: expiry_ms}; room_id -> ephemeral serial of its last change.
        self._typing: dict[str, dict[str, int]] = {}
        self._serial: dict[str, int] = {}
        self.listeners: list[EduListener] = []
        # Told the room of every change, made here or on another worker (application services).
        self.observers: list[Callable[[str], None]] = []
        self._peers = peers
        if peers is not None:
            peers.subscribe(TYPING_TOPIC, self._on_peer)

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

    def _bump(self, room_id: str, floor: int = 0) -> int:
        serial = self.notifier.bump_ephemeral(max(floor, self.clock.time_ms()))
        self._serial[room_id] = serial
        return serial

    def _store(self, room_id: str, user_id: str, expiry: int) -> bool:
        """Record that `user_id` types until `expiry` (0: stopped); whether they typed before."""
        self._expire(room_id)
        users = self._typing.setdefault(room_id, {})
        was = user_id in users
        if expiry > self.clock.time_ms():
            users[user_id] = expiry
        else:
            users.pop(user_id, None)
        if not users:
            self._typing.pop(room_id, None)
        return was

    async def set_typing(
        self, room_id: str, user_id: str, typing: bool, timeout_ms: int, local: bool = True
    ) -> None:
        expiry = self.clock.time_ms() + min(max(timeout_ms, 0), MAX_TYPING_TIMEOUT_MS) if typing else 0
        was = self._store(room_id, user_id, expiry)
        if was != typing or typing:
            serial = self._bump(room_id)
            # The other workers are told below and wake their own syncs.
            self.notifier.notify(rooms=[room_id], local_only=True)
            if self._peers is not None:
                payload = {"room_id": room_id, "user_id": user_id, "expiry": expiry, "serial": serial}
                self._peers.broadcast(TYPING_TOPIC, payload)
            self._observe(room_id, expiry)
        if local:
            for listener in self.listeners:
                await listener("m.typing", {"room_id": room_id, "user_id": user_id, "typing": typing})

    def _on_peer(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        room_id, user_id = payload.get("room_id"), payload.get("user_id")
        expiry, serial = payload.get("expiry"), payload.get("serial")
        if not (isinstance(room_id, str) and isinstance(user_id, str)):
            return
        if not (isinstance(expiry, int) and isinstance(serial, int)):
            return
        self._store(room_id, user_id, expiry)
        # At least the origin's serial, so a token made there after the change covers it here too.
        self._bump(room_id, serial)
        self.notifier.notify(rooms=[room_id], local_only=True)
        self._observe(room_id, expiry)

    def _observe(self, room_id: str, expiry: int) -> None:
        """Tell the observers of a change now, and again when a typer's timeout ends (no
        request marks that moment: the typer just stops being listed)."""
        if not self.observers:
            return
        for observe in self.observers:
            observe(room_id)
        delay = (expiry - self.clock.time_ms()) / 1000
        if delay > 0:
            asyncio.get_running_loop().call_later(delay + 0.01, self._expired, room_id)

    def _expired(self, room_id: str) -> None:
        if self._expire(room_id):
            self._bump(room_id)
            for observe in self.observers:
                observe(room_id)

    def typing_users(self, room_id: str) -> list[str]:
        if self._expire(room_id):
            self._bump(room_id)
        return sorted(self._typing.get(room_id, {}))

    def changed_since(self, room_id: str, serial: int) -> bool:
        # Expired typers count as a change, so the stop is delivered.
        if self._expire(room_id):
            self._bump(room_id)
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
