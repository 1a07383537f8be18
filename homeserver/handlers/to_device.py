"""Send-to-device messaging: queue messages for local devices, hand remote ones to federation.

A request is idempotent per (sender, sending device, txn ID): a retry is acknowledged
without queueing again. Messages for local users go to per-device inboxes read by /sync;
messages for remote users are passed to `remote_senders` (bridge/ registers there and
sends them as m.direct_to_device EDUs). Message contents are never logged.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from homeserver.errors import Codes, MatrixError, bad_json, missing_param
from homeserver.handlers.auth import Requester
from homeserver.handlers.e2e_keys import check_user_id, server_of
from homeserver.storage.accounts import AccountStore
from homeserver.storage.to_device import InboxBatch, ToDeviceStore
from homeserver.sync.notifier import Notifier
from homeserver.types import JsonDict

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_REQUEST = 10_000
MAX_EVENT_TYPE_LEN = 255
TXN_RETENTION_MS = 24 * 3600 * 1000

# (sender, event_type, message_id, {user_id: {device_id or "*": content}}) for one remote server.
RemoteSender = Callable[[str, str, str, dict[str, dict[str, JsonDict]]], Awaitable[None]]

Messages = dict[str, dict[str, JsonDict]]


def parse_messages(body: JsonDict) -> Messages:
    raw = body.get("messages")
    if raw is None:
        raise missing_param("messages")
    if not isinstance(raw, dict):
        raise bad_json("messages must be an object")
    total = 0
    for user_id, devices in raw.items():
        check_user_id(user_id)
        if not isinstance(devices, dict):
            raise bad_json("messages must map user IDs to objects of device IDs")
        for device_id, content in devices.items():
            if not isinstance(content, dict):
                raise bad_json("Each message content must be an object")
            if not device_id or len(device_id) > 255:
                raise bad_json("Invalid device ID")
        total += len(devices)
    if total > MAX_MESSAGES_PER_REQUEST:
        raise MatrixError(400, Codes.TOO_LARGE, f"At most {MAX_MESSAGES_PER_REQUEST} messages per request")
    return raw


class ToDeviceHandler:
    def __init__(
        self,
        store: ToDeviceStore,
        accounts: AccountStore,
        notifier: Notifier,
        server_name: str,
        time_ms: Callable[[], int],
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.notifier = notifier
        self.server_name = server_name
        self.time_ms = time_ms
        # bridge/ appends one sender: it queues the messages for delivery to `server_of(user)`.
        self.remote_senders: list[RemoteSender] = []
        self._last_prune_ms = 0

    async def send(self, requester: Requester, event_type: str, txn_id: str, messages: Messages) -> None:
        if not event_type or len(event_type) > MAX_EVENT_TYPE_LEN:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid event type")
        local: list[tuple[str, str, JsonDict]] = []
        remote: dict[str, Messages] = {}
        for user_id, devices in messages.items():
            if server_of(user_id) != self.server_name:
                remote.setdefault(server_of(user_id), {})[user_id] = devices
                continue
            local.extend(await self._expand(user_id, devices))
        recipients = await self.store.enqueue(
            requester.user_id,
            event_type,
            local,
            (requester.user_id, requester.device_id, txn_id),
            self.time_ms(),
        )
        if recipients is None:
            return  # a retry of a request already processed
        if recipients:
            self.notifier.notify(users=recipients)
        if remote:
            # Federation de-duplicates by message_id; one ID per request and destination.
            message_id = secrets.token_urlsafe(16)
            for server, msgs in remote.items():
                if not self.remote_senders:
                    log.info("dropping to-device messages for %s: federation is not available", server)
                for sender in self.remote_senders:
                    try:
                        await sender(requester.user_id, event_type, message_id, msgs)
                    except Exception:
                        log.exception("queueing to-device messages for %s failed", server)
        await self._maybe_prune()

    async def deliver_from_remote(
        self, sender: str, event_type: str, message_id: str, messages: Messages
    ) -> None:
        """Inbound m.direct_to_device EDU (called by bridge/): queue for our local devices."""
        local: list[tuple[str, str, JsonDict]] = []
        for user_id, devices in messages.items():
            if server_of(user_id) == self.server_name and isinstance(devices, dict):
                local.extend(
                    await self._expand(user_id, {d: c for d, c in devices.items() if isinstance(c, dict)})
                )
        recipients = await self.store.enqueue(
            sender, event_type, local, (sender, "", message_id), self.time_ms()
        )
        if recipients:
            self.notifier.notify(users=recipients)

    async def _expand(self, user_id: str, devices: dict[str, JsonDict]) -> list[tuple[str, str, JsonDict]]:
        """Local recipients: `*` means every device of the user; unknown devices are skipped."""
        existing = [row.device_id for row in await self.accounts.list_devices(user_id)]
        out: list[tuple[str, str, JsonDict]] = []
        if "*" in devices:
            content = devices["*"]
            out.extend((user_id, d, content) for d in existing)
        known = set(existing)
        out.extend((user_id, d, c) for d, c in devices.items() if d != "*" and d in known)
        return out

    async def sync_batch(
        self, user_id: str, device_id: str, since: int | None, upto: int, limit: int
    ) -> InboxBatch:
        """Read (since, upto]; then delete what the device confirmed by syncing with `since`."""
        batch = await self.store.fetch(user_id, device_id, since, upto, limit)
        if since is not None and batch.confirmed_pending:
            await self.store.delete_confirmed(user_id, device_id, since)
        return batch

    async def on_devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        await self.store.delete_devices(user_id, device_ids)

    async def _maybe_prune(self) -> None:
        now = self.time_ms()
        if now - self._last_prune_ms < 3600 * 1000:
            return
        self._last_prune_ms = now
        await self.store.prune_txns(now - TXN_RETENTION_MS)
