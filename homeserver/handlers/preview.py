"""URL previews (`/preview_url`) and the outbound-address guard shared with push delivery.

`AddressGuard` keeps server-side fetches of URLs that users choose (preview pages, push
gateways) off the server's own network: loopback, private, link-local and other special
ranges are refused unless configured. The check applies to the address actually
connected to: hostnames go through a filtering resolver whose answers the connector
uses as they are (no second lookup to rebind), and IP-literal hosts, which aiohttp does
not resolve, are checked before each request. Redirects are followed by hand so every
hop is checked again.

`UrlPreviewer` fetches a page (size and time bounded), reads its OpenGraph tags with the
standard library's HTML parser (falling back to <title> and the description meta tag),
stores an og:image in the media repository (so clients get an mxc:// URI) and caches
each result in a bounded in-memory LRU for an hour.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from bridge.discovery import DEFAULT_BLACKLIST
from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.handlers.media import MediaRepository

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
MAX_PAGE_BYTES = 1024 * 1024
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_REDIRECTS = 5
FETCH_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
CACHE_TTL_MS = 3600 * 1000
MAX_CACHED = 1000
MAX_TEXT = 1000
USER_AGENT = "Sotto URL preview (Matrix homeserver)"
HTML_TYPES = ("text/html", "application/xhtml+xml")


class RefusedAddress(OSError):
    """The target resolves only to addresses this server may not connect to."""


class AddressGuard:
    """Which outbound addresses are allowed: everything but the special ranges, plus `allowed`."""

    def __init__(self, allowed: list[str]) -> None:
        self.allowed_nets = [ipaddress.ip_network(n, strict=False) for n in allowed]
        self.blocked_nets = [ipaddress.ip_network(n, strict=False) for n in DEFAULT_BLACKLIST]

    def allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
        except ValueError:
            return False
        if any(ip in net for net in self.allowed_nets):
            return True
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            # IPv4 addresses embedded in IPv6 reach the IPv4 address they embed.
            for embedded in (ip.ipv4_mapped, ip.sixtofour):
                if embedded is not None:
                    candidates.append(embedded)
        return not any(c in net for c in candidates for net in self.blocked_nets)

    def check_url(self, url: URL) -> None:
        """Refuse non-http(s) URLs and IP-literal hosts outside the allowed addresses."""
        if url.scheme not in ("http", "https") or not url.host:
            raise MatrixError(400, Codes.INVALID_PARAM, "Only http(s) URLs can be fetched")
        host = url.host
        try:
            ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            return  # a hostname: the resolver filters its addresses
        if not self.allowed(host):
            raise RefusedAddress(f"address {host} is not allowed")

    def session(self, timeout: aiohttp.ClientTimeout, **kwargs: Any) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self), limit=50, limit_per_host=8)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False, **kwargs)


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops every address the guard refuses."""

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard
        self.inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = [r for r in await self.inner.resolve(host, port, family) if self.guard.allowed(r["host"])]
        if not results:
            raise RefusedAddress(f"no permitted address for {host}")
        return results

    async def close(self) -> None:
        await self.inner.close()


def is_refusal(exc: BaseException) -> bool:
    """Whether a client error was caused by the guard (directly or wrapped by aiohttp)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, RefusedAddress):
            return True
        os_error = getattr(seen, "os_error", None)
        if isinstance(os_error, RefusedAddress):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Parsing --------------------------------------------------------------------------------


class _OpenGraphParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.description: str | None = None
        self.title_parts: list[str] = []
        self._in_title = False
        self._title_done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "meta":
            a = {k.lower(): v for k, v in attrs if v is not None}
            key = (a.get("property") or a.get("name") or "").strip().lower()
            value = a.get("content")
            if value is None or not key:
                return
            if key.startswith("og:") and key not in self.og and len(self.og) < 50:
                self.og[key] = value
            elif key == "description" and self.description is None:
                self.description = value
        elif tag == "title" and not self._title_done:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._in_title:
            self._in_title = False
            self._title_done = True

    def handle_data(self, data: str) -> None:
        if self._in_title and sum(map(len, self.title_parts)) < MAX_TEXT:
            self.title_parts.append(data)


def _clean(text: str) -> str:
    return " ".join(text.split())[:MAX_TEXT]


def parse_open_graph(html: str) -> dict[str, Any]:
    """og:* properties of a page, with <title> / description fallbacks; og:image kept as a URL."""
    parser = _OpenGraphParser()
    try:
        parser.feed(html)
        parser.close()
    except Exception:
        pass
    out: dict[str, Any] = {}
    for key, value in parser.og.items():
        if key in ("og:image:width", "og:image:height"):
            try:
                out[key] = int(value.strip())
            except ValueError:
                continue
        elif key in ("og:image", "og:url"):
            if len(value.strip()) <= MAX_URL_LENGTH:
                out[key] = value.strip()
        else:
            out[key] = _clean(value)
    title = _clean("".join(parser.title_parts))
    if "og:title" not in out and title:
        out["og:title"] = title
    if "og:description" not in out and parser.description:
        out["og:description"] = _clean(parser.description)
    return out


def _charset(content_type_header: str | None, body: bytes) -> str:
    if content_type_header:
        for part in content_type_header.split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset" and value:
                return value.strip("\"' ")
    head = body[:2048].lower()
    marker = head.find(b"charset=")
    if marker >= 0:
        raw = head[marker + 8 : marker + 40].lstrip(b"\"' ")
        name = bytes(c for c in raw[:30] if chr(c).isalnum() or chr(c) in "-_").decode("ascii")
        if name:
            return name
    return "utf-8"


def decode_html(content_type_header: str | None, body: bytes) -> str:
    charset = _charset(content_type_header, body)
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


# Fetching -------------------------------------------------------------------------------


@dataclass(slots=True)
class Fetched:
    url: URL
    content_type: str
    content_type_header: str | None
    body: bytes


class UrlPreviewer:
    def __init__(self, media: MediaRepository, guard: AddressGuard, clock: Clock) -> None:
        self.media = media
        self.guard = guard
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._cache: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self.guard.session(
                aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def preview(self, user_id: str, url_text: str) -> dict[str, Any]:
        if not url_text or len(url_text) > MAX_URL_LENGTH:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid URL")
        try:
            url = URL(url_text)
        except ValueError:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise MatrixError(400, Codes.INVALID_PARAM, "Only http(s) URLs can be previewed")
        url = url.with_fragment(None)
        key = str(url)
        now = self.clock.time_ms()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > now:
                self._cache.move_to_end(key)
                return dict(cached[1])
            del self._cache[key]
        pending = self._inflight.get(key)
        if pending is not None:
            return dict(await asyncio.shield(pending))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._generate(user_id, url)
        except Exception as e:
            future.set_exception(e)
            future.exception()  # retrieved here, so waiters are optional
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(result)
        self._cache[key] = (self.clock.time_ms() + CACHE_TTL_MS, result)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return dict(result)

    async def _generate(self, user_id: str, url: URL) -> dict[str, Any]:
        page = await self._fetch(url, MAX_PAGE_BYTES, truncate=True)
        if page.content_type.startswith("image/"):
            return await self._image_result(user_id, page) or {}
        if page.content_type not in HTML_TYPES:
            return {}
        og = parse_open_graph(decode_html(page.content_type_header, page.body))
        image = og.pop("og:image", None)
        width, height = og.pop("og:image:width", None), og.pop("og:image:height", None)
        og.pop("og:image:type", None)
        og.pop("matrix:image:size", None)
        if isinstance(image, str) and image:
            stored = await self._fetch_image(user_id, page.url, image)
            if stored:
                og.update(stored)
                if width is not None:
                    og["og:image:width"] = width
                if height is not None:
                    og["og:image:height"] = height
        return og

    async def _fetch_image(self, user_id: str, base: URL, ref: str) -> dict[str, Any] | None:
        try:
            target = base.join(URL(ref))
            fetched = await self._fetch(target, MAX_IMAGE_BYTES, truncate=False)
        except (MatrixError, ValueError):
            return None
        if not fetched.content_type.startswith("image/"):
            return None
        return await self._image_result(user_id, fetched)

    async def _image_result(self, user_id: str, fetched: Fetched) -> dict[str, Any] | None:
        if len(fetched.body) > min(MAX_IMAGE_BYTES, self.media.max_upload):
            return None

        async def body() -> AsyncIterator[bytes]:
            yield fetched.body

        try:
            mxc = await self.media.upload(user_id, body(), fetched.content_type, None, len(fetched.body))
        except MatrixError:
            return None
        return {
            "og:image": mxc,
            "og:image:type": fetched.content_type,
            "matrix:image:size": len(fetched.body),
        }

    async def _fetch(self, url: URL, limit: int, *, truncate: bool) -> Fetched:
        """GET `url`, following redirects by hand (each hop checked); at most `limit` bytes."""
        session = self._client()
        try:
            for _ in range(MAX_REDIRECTS + 1):
                self.guard.check_url(url)
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308):
                        location = resp.headers.get("Location")
                        if not location:
                            break
                        url = url.join(URL(location)).with_fragment(None)
                        continue
                    if resp.status != 200:
                        raise MatrixError(502, Codes.UNKNOWN, f"The URL answered HTTP {resp.status}")
                    if resp.content_length is not None and resp.content_length > limit and not truncate:
                        raise MatrixError(502, Codes.TOO_LARGE, "The content is too large")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > limit:
                            if not truncate:
                                raise MatrixError(502, Codes.TOO_LARGE, "The content is too large")
                            break
                    body = b"".join(chunks)[:limit]
                    header = resp.headers.get("Content-Type")
                    ctype = (header or "").split(";")[0].strip().lower()
                    return Fetched(url, ctype, header, body)
            raise MatrixError(502, Codes.UNKNOWN, "Too many redirects")
        except MatrixError:
            raise
        except RefusedAddress:
            raise MatrixError(403, Codes.FORBIDDEN, "This URL's address is not allowed") from None
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            if is_refusal(e):
                raise MatrixError(403, Codes.FORBIDDEN, "This URL's address is not allowed") from None
            log.info("URL preview fetch failed (%s)", type(e).__name__)
            raise MatrixError(502, Codes.UNKNOWN, "Could not fetch the URL") from None
