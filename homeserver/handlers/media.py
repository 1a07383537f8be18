"""The media repository: uploads streamed to disk, downloads, thumbnails.

Files live under `media_store_path`: `local_content/ab/cd/<rest>` for uploads and
`local_thumbnails/ab/cd/<rest>/<w>-<h>-<method>` for thumbnails. Media IDs are
server-generated from `[A-Za-z0-9]`, and every ID from a request is checked
against that alphabet before it is turned into a path (no traversal).

An upload is written to a temporary file, fsynced and renamed into place
before its row is committed: a media ID is only returned once the bytes are
durable.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import shutil
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError, not_found
from homeserver.handlers import thumbnailer
from homeserver.handlers.remote_media_cache import RemoteMediaCache
from homeserver.storage.media import MediaInfo, MediaStore, ThumbnailInfo

log = logging.getLogger(__name__)

MEDIA_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
# A server name: hostname, IPv4 or [IPv6] literal, optional port.
SERVER_NAME_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?$")
_CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}(?:\s*;.{0,200})?$")
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Async uploads (/create): how long a reserved ID stays valid, and how many a user may hold.
UNUSED_EXPIRES_MS = 24 * 3600 * 1000
MAX_PENDING_PER_USER = 50
# How long a download may wait for a reserved ID's content.
MAX_WAIT_FOR_UPLOAD_MS = 20_000
DEFAULT_WAIT_FOR_UPLOAD_MS = 20_000
# Media rows deleted per statement.
DELETE_BATCH = 500

# The federation layer installs this to fetch remote media: (server, media_id) -> local path + info.
RemoteMediaFetcher = Callable[[str, str], Awaitable[tuple[str, MediaInfo] | None]]


@dataclass(slots=True, frozen=True)
class MediaFile:
    path: str
    content_type: str
    upload_name: str | None
    size: int


def _new_media_id() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))


def sanitize_content_type(raw: str | None) -> str:
    if not raw:
        return DEFAULT_CONTENT_TYPE
    raw = raw.strip()
    if not _CONTENT_TYPE_RE.match(raw) or any(c in raw for c in "\r\n\x00"):
        return DEFAULT_CONTENT_TYPE
    return raw


def sanitize_filename(raw: str | None) -> str | None:
    if raw is None:
        return None
    name = "".join(c for c in raw if c.isprintable())[:255]
    return name or None


class MediaRepository:
    def __init__(
        self, store: MediaStore, clock: Clock, server_name: str, base_path: str, max_upload: int
    ) -> None:
        self.store = store
        self.clock = clock
        self.server_name = server_name
        self.base_path = base_path
        self.max_upload = max_upload
        self.remote_fetcher: RemoteMediaFetcher | None = None
        # Media fetched from other servers (filled by bridge.media).
        self.remote_cache = RemoteMediaCache(base_path)
        self._upload_waiters: dict[str, asyncio.Event] = {}
        self._thumb_locks: dict[tuple[str, int, int, str], asyncio.Lock] = {}

    # Paths -------------------------------------------------------------------------------

    def _content_path(self, media_id: str) -> str:
        if not MEDIA_ID_RE.match(media_id) or len(media_id) < 5:
            raise not_found("Unknown media")
        return os.path.join(self.base_path, "local_content", media_id[:2], media_id[2:4], media_id[4:])

    def _thumbnail_dir(self, media_id: str) -> str:
        """Where every thumbnail of a local media item lives."""
        return self._content_path(media_id).replace(
            os.path.join(self.base_path, "local_content"), os.path.join(self.base_path, "local_thumbnails"), 1
        )

    def _thumbnail_path(self, media_id: str, width: int, height: int, method: str) -> str:
        return os.path.join(self._thumbnail_dir(media_id), f"{width}-{height}-{method}")

    def mxc(self, media_id: str) -> str:
        return f"mxc://{self.server_name}/{media_id}"

    # Uploads -----------------------------------------------------------------------------

    async def create(self, user_id: str) -> tuple[str, int]:
        """Reserve a media ID for an asynchronous upload. Returns (mxc, expires_at)."""
        now = self.clock.time_ms()
        if await self.store.count_pending(user_id, now) >= MAX_PENDING_PER_USER:
            raise MatrixError(429, Codes.LIMIT_EXCEEDED, "Too many pending uploads", retry_after_ms=60_000)
        media_id = _new_media_id()
        expires = now + UNUSED_EXPIRES_MS
        await self.store.reserve(media_id, user_id, now, expires)
        return self.mxc(media_id), expires

    async def upload(
        self,
        user_id: str,
        body: AsyncIterator[bytes],
        content_type: str | None,
        filename: str | None,
        declared_length: int | None,
        reserved_id: str | None = None,
    ) -> str:
        """Store an upload; returns its mxc:// URI."""
        if declared_length is not None and declared_length > self.max_upload:
            raise MatrixError(413, Codes.TOO_LARGE, "Upload is larger than the server allows")
        now = self.clock.time_ms()
        if reserved_id is not None:
            info = await self.store.get(reserved_id)
            if info is None:
                raise not_found("Unknown media ID")
            if info.user_id != user_id:
                raise MatrixError(403, Codes.FORBIDDEN, "This media ID was reserved by another user")
            if info.uploaded:
                raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media has already been uploaded")
            if info.expires_ts is not None and info.expires_ts < now:
                raise not_found("The reservation for this media ID has expired")
        media_id = reserved_id or _new_media_id()
        final = self._content_path(media_id)
        size, digest, tmp = await self._write_temp(body)
        try:
            ctype = sanitize_content_type(content_type)
            name = sanitize_filename(filename)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(tmp, final)
            tmp = ""
            if reserved_id is not None:
                if not await self.store.complete_reserved(media_id, ctype, name, size, digest, now):
                    raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media has already been uploaded")
                waiter = self._upload_waiters.pop(media_id, None)
                if waiter is not None:
                    waiter.set()
            else:
                await self.store.store_uploaded(media_id, user_id, ctype, name, size, digest, now)
        finally:
            if tmp:
                _unlink(tmp)
        return self.mxc(media_id)

    async def _write_temp(self, body: AsyncIterator[bytes]) -> tuple[int, str, str]:
        tmp_dir = os.path.join(self.base_path, "tmp")
        os.makedirs(tmp_dir, exist_ok=True)
        tmp = os.path.join(tmp_dir, secrets.token_hex(16))
        digest = hashlib.sha256()
        size = 0
        f = await asyncio.to_thread(open, tmp, "wb")
        try:
            with f:
                async for chunk in body:
                    size += len(chunk)
                    if size > self.max_upload:
                        raise MatrixError(413, Codes.TOO_LARGE, "Upload is larger than the server allows")
                    digest.update(chunk)
                    await asyncio.to_thread(f.write, chunk)
                # Durable before acknowledged: flush and fsync off the event loop.
                await asyncio.to_thread(_flush_and_sync, f)
        except BaseException:
            _unlink(tmp)
            raise
        return size, digest.hexdigest(), tmp

    # Downloads ---------------------------------------------------------------------------

    def check_ids(self, server_name: str, media_id: str) -> None:
        if not SERVER_NAME_RE.match(server_name) or not MEDIA_ID_RE.match(media_id):
            raise not_found("Unknown media")

    async def get_file(self, server_name: str, media_id: str, timeout_ms: int | None) -> MediaFile:
        self.check_ids(server_name, media_id)
        if server_name != self.server_name:
            return await self._remote(server_name, media_id)
        info = await self.store.get(media_id)
        if info is None or info.quarantined:
            raise not_found("Unknown media")
        if not info.uploaded:
            info = await self._wait_for_upload(info, timeout_ms)
        path = self._content_path(media_id)
        if not await asyncio.to_thread(os.path.exists, path):
            log.warning("media %s has a row but no file", media_id)
            raise not_found("Unknown media")
        return MediaFile(path, info.content_type or DEFAULT_CONTENT_TYPE, info.upload_name, info.size or 0)

    async def _remote(self, server_name: str, media_id: str) -> MediaFile:
        if self.remote_fetcher is None:
            raise not_found("Remote media is not available")
        found = await self.remote_fetcher(server_name, media_id)
        if found is None:
            raise not_found("Unknown media")
        path, info = found
        return MediaFile(path, info.content_type or DEFAULT_CONTENT_TYPE, info.upload_name, info.size or 0)

    async def _wait_for_upload(self, info: MediaInfo, timeout_ms: int | None) -> MediaInfo:
        now = self.clock.time_ms()
        if info.expires_ts is not None and info.expires_ts < now:
            raise not_found("Unknown media")
        wanted = DEFAULT_WAIT_FOR_UPLOAD_MS if timeout_ms is None else timeout_ms
        wait_ms = min(wanted, MAX_WAIT_FOR_UPLOAD_MS)
        event = self._upload_waiters.setdefault(info.media_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), wait_ms / 1000)
        except TimeoutError:
            self._upload_waiters.pop(info.media_id, None)
        fresh = await self.store.get(info.media_id)
        if fresh is None or not fresh.uploaded:
            raise MatrixError(504, "M_NOT_YET_UPLOADED", "Media has not been uploaded yet")
        return fresh

    # Administration ----------------------------------------------------------------------

    async def delete_local(self, media_ids: list[str]) -> list[str]:
        """Delete local media (rows first, so no download starts on a file being removed,
        then the content and its thumbnails). Returns the IDs that existed."""
        deleted: list[str] = []
        valid = [m for m in media_ids if MEDIA_ID_RE.match(m) and len(m) >= 5]
        for start in range(0, len(valid), DELETE_BATCH):
            deleted += await self.store.delete(valid[start : start + DELETE_BATCH])
        paths = [(self._content_path(m), self._thumbnail_dir(m)) for m in deleted]
        await asyncio.to_thread(_remove_files, paths)
        if deleted:
            log.info("deleted %d local media", len(deleted))
        return deleted

    async def purge_remote_cache(self, before_ts: int) -> int:
        """Drop media cached from other servers that was fetched before `before_ts` (ms);
        it is fetched again when next asked for. Returns how many items went."""
        deleted = await asyncio.to_thread(self.remote_cache.purge, before_ts)
        if deleted:
            log.info("purged %d cached remote media", deleted)
        return deleted

    # Thumbnails --------------------------------------------------------------------------

    async def get_thumbnail(
        self, server_name: str, media_id: str, width: int, height: int, method: str, timeout_ms: int | None
    ) -> MediaFile:
        if width < 1 or height < 1:
            raise MatrixError(400, Codes.INVALID_PARAM, "width and height must be positive")
        if method not in ("crop", "scale"):
            raise MatrixError(400, Codes.INVALID_PARAM, "method must be crop or scale")
        original = await self.get_file(server_name, media_id, timeout_ms)
        if original.content_type.split(";")[0].strip().lower() not in thumbnailer.THUMBNAILABLE_TYPES:
            raise MatrixError(400, Codes.UNKNOWN, "Cannot generate thumbnails for this content type")
        tw, th, tmethod = thumbnailer.choose_size(width, height, method)
        if server_name != self.server_name:
            # Remote media is thumbnailed by its origin (fetched by the federation layer) or not at all.
            raise MatrixError(400, Codes.UNKNOWN, "Remote thumbnails are not available")
        cached = await self.store.get_thumbnail(media_id, tw, th, tmethod)
        path = self._thumbnail_path(media_id, tw, th, tmethod)
        if cached is not None and await asyncio.to_thread(os.path.exists, path):
            return MediaFile(path, cached.content_type, None, cached.size)
        key = (media_id, tw, th, tmethod)
        lock = self._thumb_locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                cached = await self.store.get_thumbnail(media_id, tw, th, tmethod)
                if cached is not None and await asyncio.to_thread(os.path.exists, path):
                    return MediaFile(path, cached.content_type, None, cached.size)
                return await self._generate(original, media_id, width, height, tw, th, tmethod, path)
        finally:
            if not lock.locked():
                self._thumb_locks.pop(key, None)

    async def _generate(
        self,
        original: MediaFile,
        media_id: str,
        want_w: int,
        want_h: int,
        tw: int,
        th: int,
        method: str,
        path: str,
    ) -> MediaFile:
        try:
            src_w, src_h = await asyncio.to_thread(thumbnailer.image_size, original.path)
        except thumbnailer.ImageTooLarge:
            raise MatrixError(413, Codes.TOO_LARGE, "Image is too large to thumbnail") from None
        except thumbnailer.ThumbnailError:
            raise MatrixError(400, Codes.UNKNOWN, "Cannot thumbnail this image") from None
        if src_w * src_h > thumbnailer.MAX_PIXELS:
            raise MatrixError(413, Codes.TOO_LARGE, "Image is too large to thumbnail")
        if src_w <= want_w and src_h <= want_h:
            # Smaller than requested: the spec says to return the original, never an upscale.
            return original
        try:
            thumb = await asyncio.to_thread(thumbnailer.generate, original.path, tw, th, method)
        except thumbnailer.ImageTooLarge:
            raise MatrixError(413, Codes.TOO_LARGE, "Image is too large to thumbnail") from None
        except thumbnailer.ThumbnailError:
            raise MatrixError(400, Codes.UNKNOWN, "Cannot thumbnail this image") from None
        await asyncio.to_thread(_write_file, path, thumb.data)
        await self.store.add_thumbnail(
            media_id, ThumbnailInfo(tw, th, method, thumb.content_type, len(thumb.data))
        )
        return MediaFile(path, thumb.content_type, None, len(thumb.data))


def _write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp" + secrets.token_hex(4)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _flush_and_sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _remove_files(paths: list[tuple[str, str]]) -> None:
    """Each media item's content file and thumbnail directory."""
    for content, thumbnails in paths:
        _unlink(content)
        shutil.rmtree(thumbnails, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
