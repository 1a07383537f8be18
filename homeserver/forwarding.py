"""Messages sent to one worker, created by the worker that owns the room.

With several workers (`sotto serve --workers N`), one room's messages used to be built
and committed by whichever worker a client was connected to, one batch at a time under
the room's PostgreSQL advisory lock: the workers took turns, each batch held only the
senders of one worker, and every hand-over cost a lock and a read of the room's head.
Now every room has an owner, `crc32(room_id) % N`, and a worker forwards a message sent
in a room it does not own to the owner over a Unix socket in a private directory the
supervisor made (mode 0700: only this user's processes can reach it). The owner batches
it with its own senders' messages, so one room's batches no longer change hands.

Only busy shared rooms are forwarded. A worker starts forwarding a room's messages once
it has several senders of its own in the room (`EventCreator.recent_senders`) and has
found, taking the room's lock, that another worker keeps writing to it too
(`EventStore.foreign_write_listener`); it goes on while messages keep coming (a room idle for
`IDLE_AFTER_S` starts over). A room whose senders are all on one worker never pays for
the extra hop, even when another worker owns it, and neither does a room with one sender
on each worker: there the hop cost more than the lock hand-overs it saved (measured with
`python -m bench --quick --targets sotto-workers --scenarios throughput`, ten rooms of two).

Forwarding is a route, not a rule: the owner writes through the same room lock as
before, so correctness never depends on it. A message is only forwarded with a
transaction ID, and if the owner cannot be reached or does not answer, the worker
creates the message itself. A message the owner stored before it failed is found by its
transaction ID, so it is stored once either way. State events, redactions and
everything else are created where they arrive, as before.

The wire is one connection per pair of workers carrying frames: a 4-byte length and a
JSON object, requests and answers matched by a number. HTTP (an aiohttp client and
server) cost more CPU per forwarded message than the lock hand-overs it saved.

Workers on several hosts (separate pods behind a load balancer) reach each other over TCP
instead (`Links.peers`, one "host:port" per worker). Anyone who can reach that port could
otherwise have messages created in any user's name, so every connection starts with a
challenge: the listener sends a random nonce, and the connecting worker answers with the
HMAC-SHA256 of it under the workers' shared secret (`workers.secret`); a connection that
answers wrongly, or sends anything else first, is closed. The traffic itself is not
encrypted: keep the port on the cluster's private network.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import os
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from homeserver import jsonutil
from homeserver.errors import Codes, MatrixError
from homeserver.events.model import Event
from homeserver.handlers.event_creation import EventCreator
from homeserver.storage.engine import Database
from homeserver.storage.event_types import TxnInfo

log = logging.getLogger(__name__)

# The owner answers once the message is committed; past this the worker creates it itself
# (its transaction ID keeps it from being stored twice).
FORWARD_TIMEOUT_S = 30.0
# After the owner could not be reached, messages for its rooms are created locally for this
# long before the owner is tried again (it is restarting, or gone).
RETRY_AFTER_S = 2.0
# A worker forwards a room's messages once it has found another worker's writes this often
# within this window (a join by another worker now and then is not sharing) ...
SHARED_AFTER_WRITES = 3
FOREIGN_WRITES_WINDOW_S = 5.0
# ... and has this many senders of its own in the room ...
SHARED_MIN_SENDERS = 3
# ... and goes on until the room has had no message here for this long.
IDLE_AFTER_S = 60.0
# Room IDs and event types are short; the content is bounded by the client API's own limit.
OVERHEAD_BYTES = 16 * 1024
_LENGTH = 4
MAX_ROOMS = 10_000  # rooms tracked in each table below


def room_owner(room_id: str, count: int) -> int:
    """The index of the worker that creates the room's messages."""
    return zlib.crc32(room_id.encode()) % count


@dataclass(frozen=True, slots=True)
class Links:
    """How the workers reach each other: Unix sockets in a private directory (one host),
    or TCP to `peers` ("host:port" by worker index) with a shared `secret`."""

    directory: str | None = None
    peers: tuple[str, ...] = ()
    secret: bytes = b""
    listen_address: str = "0.0.0.0"

    def proof(self, nonce: str) -> str:
        """The answer to a listener's challenge."""
        return hmac.new(self.secret, nonce.encode(), hashlib.sha256).hexdigest()

    def address(self, index: int) -> tuple[str, int]:
        host, _, port = self.peers[index].rpartition(":")
        return host.strip("[]"), int(port)


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"{index}.sock")


def sockets_directory_ok(directory: str) -> bool:
    """Whether the directory is private to this user (the listeners trust whoever connects)."""
    try:
        info = Path(directory).stat()
    except OSError:
        return False
    return info.st_uid == os.getuid() and (info.st_mode & 0o077) == 0


class _Frames(asyncio.Protocol):
    """Length-prefixed JSON frames over one stream connection, both directions."""

    def __init__(
        self,
        on_frame: Callable[[_Frames, Any], None],
        max_frame: int,
        on_connected: Callable[[_Frames], None] | None = None,
    ) -> None:
        self._on_frame = on_frame
        self._max_frame = max_frame
        self._on_connected = on_connected
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        # A TCP listener's side: the challenge it sent, and whether it was answered.
        self.nonce = ""
        self.trusted = on_connected is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        if self._on_connected is not None:
            self._on_connected(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _LENGTH:
            size = int.from_bytes(buffer[:_LENGTH], "big")
            if size > self._max_frame:
                log.warning("closing a worker connection: a frame of %d bytes", size)
                if self.transport is not None:
                    self.transport.close()
                return
            end = _LENGTH + size
            if len(buffer) < end:
                return
            frame = bytes(buffer[_LENGTH:end])
            del buffer[:end]
            try:
                message = jsonutil.loads(frame)
            except ValueError:
                log.warning("closing a worker connection: a frame that is not JSON")
                if self.transport is not None:
                    self.transport.close()
                return
            self._on_frame(self, message)

    def send(self, message: Any) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the worker connection is closed")
        data = jsonutil.dumpb(message)
        self.transport.write(len(data).to_bytes(_LENGTH, "big") + data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Peer:
    """This worker's connection to one owner, and the forwarded messages it awaits."""

    def __init__(self, prove: Callable[[str], str] | None = None) -> None:
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self._prove = prove
        # Set once the listener's challenge is answered (at once over a Unix socket).
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if prove is None:
            self.ready.set_result(None)

    def attach(self, frames: _Frames) -> None:
        self.frames = frames
        frames.closed.add_done_callback(self._lost)

    def on_frame(self, frames: _Frames, message: Any) -> None:
        if not self.ready.done():
            nonce = message.get("nonce") if isinstance(message, dict) else None
            if not isinstance(nonce, str) or self._prove is None:
                frames.close()
                return
            frames.send({"auth": self._prove(nonce)})
            self.ready.set_result(None)
            return
        request_id = message.get("i") if isinstance(message, dict) else None
        future = self.waiting.pop(request_id, None) if isinstance(request_id, int) else None
        if future is not None and not future.done():
            future.set_result(message)

    def _lost(self, _closed: asyncio.Future[None]) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionResetError("the worker connection was lost"))
            self.ready.exception()  # retrieved: nobody may be waiting for it
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionResetError("the worker connection was lost"))
        self.waiting.clear()


class RoomForwarding:
    """This worker's end of forwarding: a listener (Unix socket, or TCP) for messages of the
    rooms it owns, and connections to the other workers' listeners. A background service
    (start/stop)."""

    def __init__(
        self, creator: EventCreator, db: Database, links: Links, index: int, count: int, max_body: int
    ) -> None:
        self.creator = creator
        self.db = db
        self.links = links
        self.index = index
        self.count = count
        self.max_frame = max_body + OVERHEAD_BYTES
        self.forwarded = 0  # messages this worker had another create
        self.created_for_others = 0  # messages this worker created for another
        self.fallbacks = 0  # messages for another's room created here, the owner unreachable
        self._server: asyncio.AbstractServer | None = None
        self._serving: set[_Frames] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._peers: dict[int, _Peer] = {}
        self._connecting: dict[int, asyncio.Lock] = {}
        self._unreachable_until: dict[int, float] = {}
        self._ids = itertools.count()
        # Rooms whose messages go to their owner: when the last one went.
        self._forwarding: dict[str, float] = {}
        # Per room: another worker's writes found under the room's lock (when the count
        # started, time.monotonic(); the count). Counts start over after the window.
        self._foreign_writes: dict[str, tuple[float, int]] = {}

    # The owner's side ----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.links.directory is not None:
            path = socket_path(self.links.directory, self.index)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by this worker's previous process
            self._server = await loop.create_unix_server(self._accept, path)
            os.chmod(path, 0o600)
        else:
            _, port = self.links.address(self.index)
            self._server = await loop.create_server(
                self._accept, self.links.listen_address, port, reuse_address=True
            )
        self.creator.store.foreign_write_listener = self._count_foreign_write
        self.creator.forwarder = self

    async def stop(self) -> None:
        self.creator.forwarder = None
        self.creator.store.foreign_write_listener = None
        log.info(
            "worker %d: %d messages forwarded, %d created for other workers, %d created here "
            "with the owner away",
            self.index,
            self.forwarded,
            self.created_for_others,
            self.fallbacks,
        )
        for peer in self._peers.values():
            if peer.frames.transport is not None:
                peer.frames.transport.close()
        self._peers.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        for frames in list(self._serving):
            if frames.transport is not None:
                frames.transport.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self) -> _Frames:
        challenge = self._challenge if self.links.directory is None else None
        frames = _Frames(self._on_request, self.max_frame, challenge)
        self._serving.add(frames)
        frames.closed.add_done_callback(lambda _f: self._serving.discard(frames))
        return frames

    @staticmethod
    def _challenge(frames: _Frames) -> None:
        frames.nonce = secrets.token_hex(16)
        frames.send({"nonce": frames.nonce})

    def _on_request(self, frames: _Frames, message: Any) -> None:
        if not frames.trusted:
            proof = message.get("auth") if isinstance(message, dict) else None
            if isinstance(proof, str) and hmac.compare_digest(proof, self.links.proof(frames.nonce)):
                frames.trusted = True
            else:
                log.warning("closing a worker connection that did not answer the challenge")
                frames.close()
            return
        task = asyncio.create_task(self._answer(frames, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, frames: _Frames, message: Any) -> None:
        answer: dict[str, Any]
        # The forwarding worker's span (its peers are trusted: the link is authenticated).
        traceparent = message.get("traceparent")
        tracing = self.creator.tracing
        parent = tracing.extract({"traceparent": traceparent}) if isinstance(traceparent, str) else None
        try:
            with tracing.span("worker.forwarded", parent=parent):
                event, stream_id = await self._create(message)
        except MatrixError as e:
            answer = {"status": e.status, **e.to_json()}
        except Exception:
            log.exception("creating a forwarded message failed")
            answer = {"status": 500, **MatrixError(500, Codes.UNKNOWN, "Internal server error").to_json()}
        else:
            self.created_for_others += 1
            # Everything at or below this position is committed by every worker (the
            # invariant of homeserver.sync.redis_bridge's messages), the new event included.
            position = self.db.current_stream_id
            answer = {"pdu": event.pdu, "event_id": event.event_id, "stream_id": stream_id, "p": position}
        answer["i"] = message.get("i")
        with contextlib.suppress(ConnectionError):
            frames.send(answer)

    async def _create(self, message: Any) -> tuple[Event, int]:
        return await self.creator.create_and_send(
            room_id=message["room_id"],
            type=message["type"],
            sender=message["sender"],
            content=message["content"],
            txn=TxnInfo(*message["txn"]),
            forwarded=True,
            check_joined=bool(message.get("check_joined")),
        )

    # The forwarding side -------------------------------------------------------------------

    def _count_foreign_write(self, room_id: str) -> None:
        now = time.monotonic()
        since, count = self._foreign_writes.get(room_id, (now, 0))
        if now - since > FOREIGN_WRITES_WINDOW_S:
            since, count = now, 0
        elif len(self._foreign_writes) >= MAX_ROOMS:
            self._foreign_writes.clear()
        self._foreign_writes[room_id] = (since, count + 1)

    def owner(self, room_id: str) -> int | None:
        """The worker to forward this room's messages to; None to create them here."""
        owner = room_owner(room_id, self.count)
        now = time.monotonic()
        if owner == self.index or now < self._unreachable_until.get(owner, 0.0):
            return None
        last = self._forwarding.get(room_id)
        if last is None or now - last > IDLE_AFTER_S:
            since, count = self._foreign_writes.get(room_id, (0.0, 0))
            if (
                count < SHARED_AFTER_WRITES
                or now - since > FOREIGN_WRITES_WINDOW_S
                or self.creator.recent_senders(room_id) < SHARED_MIN_SENDERS
            ):
                self._forwarding.pop(room_id, None)
                return None
            if len(self._forwarding) >= MAX_ROOMS:
                self._forwarding.clear()
        self._forwarding[room_id] = now
        return owner

    async def forward(
        self,
        owner: int,
        room_id: str,
        event_type: str,
        sender: str,
        content: dict[str, Any],
        txn: TxnInfo,
        check_joined: bool,
    ) -> tuple[Event, int] | None:
        """Have the owner create the message: (event, stream position), or None when it could
        not be reached or did not answer (the caller creates the message itself)."""
        request_id = next(self._ids)
        request = {
            "i": request_id,
            "room_id": room_id,
            "type": event_type,
            "sender": sender,
            "content": content,
            "txn": [txn.user_id, txn.device_id, txn.txn_id],
            "check_joined": check_joined,
        }
        tracing = self.creator.tracing
        with tracing.span("worker.forward", {"sotto.worker.owner": owner}, client=True):
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
            if "traceparent" in carrier:
                request["traceparent"] = carrier["traceparent"]
            peer: _Peer | None = None
            try:
                async with asyncio.timeout(FORWARD_TIMEOUT_S):
                    peer = await self._peer(owner)
                    future = peer.waiting[request_id] = asyncio.get_running_loop().create_future()
                    peer.frames.send(request)
                    answer = await future
            except (OSError, TimeoutError) as e:
                if peer is not None:
                    peer.waiting.pop(request_id, None)
                self._unreachable_until[owner] = time.monotonic() + RETRY_AFTER_S
                self.fallbacks += 1
                log.warning(
                    "worker %d did not take a message (%s); creating it here", owner, type(e).__name__
                )
                return None
        if "errcode" in answer:
            extra = {k: v for k, v in answer.items() if k not in ("i", "status", "errcode", "error")}
            raise MatrixError(int(answer["status"]), answer["errcode"], str(answer.get("error", "")), **extra)
        room_version = await self.creator.store.get_room_version(room_id)
        if room_version is None:  # the owner created an event in it: the room exists
            raise MatrixError(500, Codes.UNKNOWN, "The room's version is unknown")
        self.forwarded += 1
        self.db.observe_stream_position(int(answer["p"]))
        return Event(answer["pdu"], room_version, event_id=answer["event_id"]), int(answer["stream_id"])

    async def _peer(self, owner: int) -> _Peer:
        peer = self._peers.get(owner)
        if peer is not None and not peer.frames.closed.done():
            return peer
        lock = self._connecting.setdefault(owner, asyncio.Lock())
        async with lock:
            peer = self._peers.get(owner)
            if peer is not None and not peer.frames.closed.done():
                return peer
            loop = asyncio.get_running_loop()
            fresh = _Peer(None if self.links.directory is not None else self.links.proof)
            if self.links.directory is not None:
                path = socket_path(self.links.directory, owner)
                _, frames = await loop.create_unix_connection(
                    lambda: _Frames(fresh.on_frame, self.max_frame), path
                )
            else:
                host, port = self.links.address(owner)
                _, frames = await loop.create_connection(
                    lambda: _Frames(fresh.on_frame, self.max_frame), host, port
                )
            fresh.attach(frames)
            await fresh.ready
            self._peers[owner] = fresh
            return fresh
