"""Media over federation (authenticated media, spec v1.11).

Inbound: `GET /_matrix/federation/v1/media/download/{mediaId}` answers `multipart/mixed`
with a JSON metadata part (`{}`) and the content part.
Outbound: the media repository's `remote_fetcher` downloads remote media once through the
same endpoint (following a `Location` part if the origin redirects) and caches it under
`<media_store_path>/remote/`, so later downloads are served locally.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import aiohttp
from aiohttp import web

from bridge.client import FederationClient, FederationError, fed_path, read_limited
from homeserver.handlers.media import MediaRepository
from homeserver.server import HomeServer
from homeserver.storage.media import MediaInfo

log = logging.getLogger(__name__)

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_FILENAME = re.compile(r'filename\*?=(?:UTF-8\'\')?"?([^";]+)"?', re.IGNORECASE)


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body into (headers, content) parts."""
    m = _BOUNDARY.search(content_type)
    if m is None:
        raise ValueError("multipart response without a boundary")
    delimiter = b"--" + m.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, content.removesuffix(b"\r\n")))
    return parts


class FederatedMedia:
    def __init__(self, hs: HomeServer, media: MediaRepository, client: FederationClient) -> None:
        self.hs = hs
        self.media = media
        self.client = client
        self.cache = media.remote_cache
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def install(self) -> None:
        self.media.remote_fetcher = self.fetch

    def _info(self, media_id: str, meta: dict[str, Any]) -> MediaInfo:
        return MediaInfo(
            media_id=media_id,
            user_id="",
            content_type=meta.get("content_type"),
            upload_name=meta.get("upload_name"),
            size=meta.get("size"),
            created_ts=int(meta.get("ts", 0)),
            uploaded_ts=int(meta.get("ts", 0)),
            expires_ts=None,
            quarantined=False,
        )

    async def fetch(self, server: str, media_id: str) -> tuple[str, MediaInfo] | None:
        path, _ = self.cache.paths(server, media_id)
        key = (server, media_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                cached = await asyncio.to_thread(self.cache.read_meta, server, media_id)
                if cached is not None and cached.get("quarantined"):
                    return None  # quarantined by an admin: served to no one, not fetched
                if cached is not None:
                    return path, self._info(media_id, cached)
                downloaded = await self._download(server, media_id)
                if downloaded is None:
                    return None
                content, content_type, upload_name = downloaded
                meta = {
                    "content_type": content_type,
                    "upload_name": upload_name,
                    "size": len(content),
                    "ts": self.hs.clock.time_ms(),
                }
                await asyncio.to_thread(self.cache.write, server, media_id, content, meta)
                return path, self._info(media_id, meta)
        finally:
            if not lock.locked():
                self._locks.pop(key, None)

    async def _download(self, server: str, media_id: str) -> tuple[bytes, str, str | None] | None:
        limit = self.hs.config.limits.max_upload_bytes
        try:
            status, headers, body = await self.client.request_raw(
                "GET",
                server,
                fed_path("/_matrix/federation/v1/media/download/{}", media_id),
                query={"timeout_ms": "20000"},
                timeout=60,
                max_bytes=limit + 64 * 1024,
            )
        except FederationError as e:
            log.info("remote media %s/%s: %s", server, media_id, e)
            return None
        if status != 200:
            return None
        ctype = headers.get("Content-Type", "")
        try:
            parts = parse_multipart(ctype, body)
        except ValueError:
            return None
        if len(parts) < 2:
            return None
        part_headers, content = parts[1]
        location = part_headers.get("location")
        if location:
            content_or_none = await self._follow(location, limit)
            if content_or_none is None:
                return None
            content = content_or_none
        disposition = part_headers.get("content-disposition", "")
        name = _FILENAME.search(disposition)
        content_type = part_headers.get("content-type", "application/octet-stream")
        return content, content_type, name.group(1) if name else None

    async def _follow(self, location: str, limit: int) -> bytes | None:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(location, timeout=aiohttp.ClientTimeout(total=60), ssl=self.client.ssl_context) as resp,
            ):
                if resp.status != 200:
                    return None
                data = await read_limited(resp.content, limit + 1)
                return data if len(data) <= limit else None
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    # Inbound ------------------------------------------------------------------------------------

    async def serve_download(self, media_id: str, timeout_ms: int | None) -> web.Response:
        found = await self.media.get_file(self.hs.server_name, media_id, timeout_ms)
        content = await asyncio.to_thread(_read_file, found.path)
        writer = aiohttp.MultipartWriter("mixed")
        writer.append_json({})
        part = writer.append(content, {"Content-Type": found.content_type})
        if found.upload_name:
            part.set_content_disposition("inline", filename=found.upload_name)
        return web.Response(body=writer)

    def routes(self) -> list[tuple[str, str, Any]]:
        async def download(request: web.Request, origin: str, content: Any) -> Any:
            raw = request.query.get("timeout_ms")
            timeout = int(raw) if raw and raw.isdigit() else None
            return await self.serve_download(request.match_info["media_id"], timeout)

        return [("GET", "/_matrix/federation/v1/media/download/{media_id}", download)]


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
