"""matrix-nio's AsyncClient with the few fixes a well-behaved bot needs.

- Rate limits: nio already retries 429 / `M_LIMIT_EXCEEDED` after `retry_after_ms`; servers
  following spec v1.10+ may give the delay only in the `Retry-After` header, which nio ignores
  (it then sleeps a fixed 5 s). We read the header so the server's delay is honoured either way.
- Encrypted reactions: nio sends `m.reaction` in clear even in encrypted rooms; we encrypt it
  like any other event (the relation stays in clear, as the spec requires).
- Trust: before a Megolm session is shared, a `before_share` hook lets the trust policy decide
  about every device that could receive the key, including ones discovered just now.
- Key verification: nio's own SAS state machine answers to-device verification events by itself
  with a hex commitment and mislabelled MACs that only nio accepts; we keep the events from it,
  so they only reach the bot's handlers (`clients.device_verification` runs SAS instead).
- Token refresh (OAuth logins): with a `token_refresher`, every request first renews an access
  token about to expire, and a 401 `M_UNKNOWN_TOKEN` with `soft_logout: true` is renewed and
  retried once (`clients.token_refresh`).
- `request_json`: a raw JSON call (cross-signing endpoints nio lacks) that still goes through
  nio's retry logic for rate limits and connection errors.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote
from uuid import uuid4

from aiohttp import ClientResponse
from nio import (
    AsyncClient,
    ErrorResponse,
    KeyVerificationEvent,
    LocalProtocolError,
    Response,
    RoomSendResponse,
    ToDeviceEvent,
)
from nio.api import Api

from clients.token_refresh import TokenRefresher

log = logging.getLogger(__name__)

BeforeShare = Callable[[str], Awaitable[None]]

# A server asking us to wait longer than this is misbehaving; we still wait, but say so.
LONG_RETRY_MS = 5 * 60 * 1000


@dataclass
class JsonResponse(Response):  # type: ignore[misc]
    """Any JSON answer, successful or not, for endpoints nio has no response class for."""

    body: dict[str, Any] = field(default_factory=dict)
    retry_after_ms: int | None = None

    @classmethod
    def from_dict(cls, parsed_dict: dict[str, Any]) -> JsonResponse:
        return cls(body=parsed_dict)

    @property
    def status(self) -> int:
        transport: ClientResponse | None = self.transport_response
        return transport.status if transport is not None else 0


def retry_after_from_header(value: str | None, now_ms: int) -> int | None:
    """`Retry-After` is either delay-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value) * 1000
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0, int(when.timestamp() * 1000) - now_ms)


def is_soft_logout(resp: Any) -> bool:
    """An expired (not revoked) access token: the client may renew it and carry on."""
    if isinstance(resp, ErrorResponse):
        return resp.status_code == "M_UNKNOWN_TOKEN" and bool(resp.soft_logout)
    if isinstance(resp, JsonResponse):
        return (
            resp.status == 401
            and resp.body.get("errcode") == "M_UNKNOWN_TOKEN"
            and resp.body.get("soft_logout") is True
        )
    return False


class SottoAsyncClient(AsyncClient):  # type: ignore[misc]
    before_share: BeforeShare | None = None
    token_refresher: TokenRefresher | None = None

    async def _send(self, response_class: type, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        refresher = self.token_refresher
        if refresher is None:
            return await super()._send(response_class, method, path, *args, **kwargs)
        await refresher.before_request()
        self.access_token = used = refresher.access_token
        resp = await super()._send(response_class, method, path, *args, **kwargs)
        if is_soft_logout(resp) and await refresher.after_soft_logout(used):
            self.access_token = refresher.access_token
            resp = await super()._send(response_class, method, path, *args, **kwargs)
        return resp

    async def create_matrix_response(
        self,
        response_class: type,
        transport_response: ClientResponse,
        data: tuple[Any, ...] | None = None,
        save_to: os.PathLike[str] | None = None,
    ) -> Any:
        resp = await super().create_matrix_response(response_class, transport_response, data, save_to)
        if transport_response.status == 429 and not getattr(resp, "retry_after_ms", None):
            delay = retry_after_from_header(
                transport_response.headers.get("Retry-After"), int(time.time() * 1000)
            )
            if delay is not None:
                resp.retry_after_ms = delay
        if transport_response.status == 429:
            delay = getattr(resp, "retry_after_ms", None)
            if delay and delay > LONG_RETRY_MS:
                log.warning("homeserver asked us to wait %d ms before retrying", delay)
        return resp

    def _handle_decrypt_to_device(self, to_device_event: ToDeviceEvent) -> ToDeviceEvent | None:
        if isinstance(to_device_event, KeyVerificationEvent):
            return None  # delivered to the callbacks and the sync response, not to nio's Sas
        decrypted: ToDeviceEvent | None = super()._handle_decrypt_to_device(to_device_event)
        return decrypted

    async def request_json(self, method: str, path: str, body: dict[str, Any] | None = None) -> JsonResponse:
        """Call a Client-Server endpoint (path under /_matrix/client) with retries."""
        data = Api.to_json(body) if body is not None else None
        resp: JsonResponse = await self._send(JsonResponse, method, "/_matrix/client" + path, data)
        return resp

    async def room_send(
        self,
        room_id: str,
        message_type: str,
        content: dict[str, Any],
        tx_id: str | None = None,
        ignore_unverified_devices: bool = False,
    ) -> Any:
        """Like nio's, but reactions are encrypted too and the trust policy runs first."""
        if not (self.olm and room_id in self.rooms and self.rooms[room_id].encrypted):
            return await super().room_send(room_id, message_type, content, tx_id, ignore_unverified_devices)
        room = self.rooms[room_id]
        if not room.members_synced:
            await self.joined_members(room_id)
        if self.should_query_keys:
            await self.keys_query()
        if self.before_share is not None:
            await self.before_share(room_id)
        if self.olm.should_share_group_session(room_id):
            try:
                event = self.sharing_session[room_id]
                await event.wait()
            except KeyError:
                await self.share_group_session(room_id, ignore_unverified_devices=ignore_unverified_devices)
        message_type, content = self.encrypt(room_id, message_type, content)
        method, path, data = Api.room_send(
            self.access_token, room_id, message_type, content, tx_id or uuid4()
        )
        return await self._send(RoomSendResponse, method, path, data, (room_id,))


def path_user(user_id: str) -> str:
    return quote(user_id, safe="")


def is_error(resp: Any) -> bool:
    if isinstance(resp, ErrorResponse):
        return True
    if isinstance(resp, JsonResponse):
        return not 200 <= resp.status < 300
    return False


__all__ = ["JsonResponse", "LocalProtocolError", "SottoAsyncClient", "is_error", "path_user"]
