"""Requests that wait outside aiohttp: a parked long-poll holds a small protocol object
instead of aiohttp's request machinery.

While a request is in progress aiohttp keeps its parsed request and headers, the
connection's protocol and parser, a task per connection and one per request, and the
coroutine frames of the handler chain: 11 KiB of RSS per parked `/sync` on this machine
before any homeserver state (bench: the `bare` target's memory floor), most of a busy
server's memory. `detach` takes such a request's connection away instead: the transport
gets a `Parked` protocol, aiohttp's handler ends without answering or closing anything
(the handler returns `handed_over()`), and when the wait is over `Parked.respond` writes
the answer as HTTP/1.1 and gives the connection to a fresh aiohttp protocol for the
client's next request.

Only when it is safe: a keep-alive HTTP/1.1 GET, nothing else from the client queued
behind it (pipelined requests), and aiohttp's connection state as this module expects;
otherwise `detach` returns None and the request waits the ordinary way. This relies on
attributes of aiohttp's RequestHandler (checked each time, and by
tests/integration/test_detached_sync.py): an aiohttp that changes them makes requests
wait the ordinary way, and that test fail.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, TypeVar

from aiohttp import HttpVersion11, web
from aiohttp.http import SERVER_SOFTWARE

from homeserver.api.middleware import CORS_HEADERS

# Bytes the client may send while parked (its next request) before reading pauses.
MAX_PENDING = 64 * 1024

_FIXED_HEADERS = (
    "Content-Type: application/json\r\n"
    f"Server: {SERVER_SOFTWARE}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in CORS_HEADERS.items())
).encode()


class Parked(asyncio.Protocol):
    """A connection's protocol while its request waits: keeps what the client sends
    meanwhile for aiohttp, and reports a lost connection (`lost`)."""

    __slots__ = ("paused", "pending", "server", "transport")

    def __init__(self) -> None:
        self.server: Callable[[], asyncio.Protocol] | None = None
        self.transport: asyncio.Transport | None = None
        self.pending = b""
        self.paused = False

    def data_received(self, data: bytes) -> None:
        self.pending += data
        if len(self.pending) >= MAX_PENDING and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # the client is done: close, which ends the wait (connection_lost)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost()

    def lost(self) -> None:
        """The connection closed while parked (subclasses stop their wait)."""

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def respond(self, status: int, body: bytes) -> None:
        """Answer the request with a JSON body and hand the connection back to aiohttp."""
        transport, server = self.transport, self.server
        if transport is None or server is None or transport.is_closing():
            return
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            f"Content-Length: {len(body)}\r\nDate: {formatdate(usegmt=True)}\r\n"
        ).encode()
        transport.write(head + _FIXED_HEADERS + b"\r\n" + body)
        self.transport = None
        handler = server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        pending, self.pending = self.pending, b""
        if pending:
            handler.data_received(pending)
        if self.paused:
            transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


P = TypeVar("P", bound=Parked)


def detach(request: web.Request, make: Callable[[], P]) -> P | None:
    """Take `request`'s connection from aiohttp into a `make()` protocol, or None when
    that is not safe (see the module's docstring). After a detach the handler must return
    `handed_over()` and write nothing."""
    if request.method != "GET" or request.version != HttpVersion11 or not request.keep_alive:
        return None
    proto: Any = request.protocol
    transport = request.transport
    server = getattr(proto, "_manager", None)
    queued = getattr(proto, "_messages", None)
    if (
        transport is None
        or transport.is_closing()
        or not callable(server)
        or not isinstance(queued, deque)
        or queued
        or getattr(proto, "_message_tail", None) != b""
        or getattr(proto, "_upgraded", None) is not False
        or getattr(proto, "_payload_parser", True) is not None
        or getattr(proto, "transport", None) is not transport
        or not callable(getattr(proto, "keep_alive", None))
        or not callable(getattr(server, "connection_lost", None))
    ):
        return None
    assert transport is not None
    parked = make()
    parked.server = server
    parked.transport = transport
    transport.set_protocol(parked)
    # aiohttp's handler of this connection: its keep-alive timer goes (it would keep the
    # handler alive for the keep-alive timeout), its loop ends after this request, and
    # with no transport ending it closes nothing; shutdown no longer waits for it.
    proto.keep_alive(False)
    proto.transport = None
    server.connection_lost(proto, None)
    return parked


class _HandedOver(web.StreamResponse):
    """What a handler returns after `detach`: aiohttp finishes the request writing nothing."""

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def handed_over() -> web.StreamResponse:
    return _HandedOver()


def is_handed_over(resp: web.StreamResponse) -> bool:
    """Whether a handler's answer is `handed_over()`: the request is answered later."""
    return isinstance(resp, _HandedOver)
