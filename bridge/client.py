"""The outbound federation HTTP client: discovery, TLS, X-Matrix signing, bounded JSON.

Every request to another server goes through `FederationClient.request`, which resolves
the server name, refuses forbidden addresses, signs the request and decodes a JSON body of
bounded size. Failures are `FederationError`s (a remote Matrix error with its status and
errcode, or `Unreachable` for network/TLS/timeout problems); they are never shown to
clients as they are.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from signedjson.types import SigningKey
from yarl import URL

from bridge.discovery import AddressFilter, FilteringResolver, ServerResolver, is_ip_literal, parse_max_age
from bridge.xmatrix import authorization_header
from homeserver import jsonutil
from homeserver.clock import Clock
from homeserver.tracing import DISABLED, Tracing, endpoint_of

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024 * 1024


async def read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Read a body to its end, or up to `limit` bytes.

    `StreamReader.read(n)` returns as soon as *some* data is buffered, so a single call
    truncates large responses; this loops until EOF or the limit."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


DEFAULT_TIMEOUT_S = 30.0


class FederationError(Exception):
    """A federation request failed."""


class Unreachable(FederationError):
    """The server could not be reached (DNS, connection, TLS, timeout, refused address)."""


class RemoteError(FederationError):
    """The server answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.errcode = str(self.body.get("errcode", "M_UNKNOWN"))
        super().__init__(f"HTTP {status} {self.errcode}: {self.body.get('error', '')}"[:300])


def fed_path(template: str, *args: str) -> str:
    """Fill `{}` placeholders with percent-encoded path segments."""
    return template.format(*(quote(a, safe="") for a in args))


class FederationClient:
    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        clock: Clock,
        ssl_context: ssl.SSLContext,
        address_filter: AddressFilter,
    ) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self.clock = clock
        self.ssl_context = ssl_context
        self.filter = address_filter
        self.resolver = ServerResolver(clock, self._fetch_well_known)
        self._session: aiohttp.ClientSession | None = None
        # Spans for requests to other servers (set by the federation service).
        self.tracing: Tracing = DISABLED

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self.ssl_context, resolver=FilteringResolver(self.filter), limit=200, limit_per_host=20
            )
            self._session = aiohttp.ClientSession(connector=connector, json_serialize=jsonutil.dumps)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch_well_known(self, host: str) -> tuple[Any, int | None]:
        url = URL.build(scheme="https", host=host, path="/.well-known/matrix/server")
        async with self.session().get(
            url, timeout=aiohttp.ClientTimeout(total=10), allow_redirects=True
        ) as resp:
            if resp.status != 200:
                return None, None
            raw = await read_limited(resp.content, 64 * 1024)
            return jsonutil.loads(raw), parse_max_age(resp.headers.get("Cache-Control"))

    async def request(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        query: list[tuple[str, str]] | dict[str, str] | None = None,
        body: Any | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        signed: bool = True,
    ) -> Any:
        """Send a request to `destination` and return its decoded JSON body."""
        status, _headers, raw = await self.request_raw(
            method, destination, path, query=query, body=body, timeout=timeout, signed=signed
        )
        try:
            decoded = jsonutil.loads(raw) if raw else {}
        except ValueError:
            decoded = None
        if status >= 300:
            raise RemoteError(status, decoded)
        if decoded is None:
            raise RemoteError(status, {"errcode": "M_NOT_JSON", "error": "response is not JSON"})
        return decoded

    async def request_raw(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        query: list[tuple[str, str]] | dict[str, str] | None = None,
        body: Any | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        signed: bool = True,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send a request; return (status, headers, body bytes) whatever the status."""
        if destination == self.server_name:
            raise FederationError("refusing to send a federation request to ourselves")
        uri = path
        if query:
            items = list(query.items()) if isinstance(query, dict) else list(query)
            uri += "?" + urlencode(items, quote_via=quote)
        try:
            target = await self.resolver.resolve(destination)
        except ValueError as e:
            raise Unreachable(str(e)) from None
        if is_ip_literal(target.host) and not self.filter.allowed(target.host):
            raise Unreachable(f"address {target.host} is not permitted")
        host = f"[{target.host}]" if ":" in target.host else target.host
        url = URL(f"https://{host}:{target.port}{uri}", encoded=True)
        headers = {"Host": target.host_header}
        if signed:
            headers["Authorization"] = authorization_header(
                method, uri, self.server_name, destination, body, self.signing_key
            )
        data = None
        if body is not None:
            data = jsonutil.dumpb(body)
            headers["Content-Type"] = "application/json"
        endpoint = endpoint_of(path)
        attributes = {"http.request.method": method, "server.address": destination, "url.template": endpoint}
        with self.tracing.span(f"{method} {endpoint}", attributes, client=True, root=True) as span:
            self.tracing.inject(headers)
            try:
                async with self.session().request(
                    method, url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as resp:
                    if span is not None:
                        span.set_attribute("http.response.status_code", resp.status)
                    raw = await read_limited(resp.content, max_bytes + 1)
                    if len(raw) > max_bytes:
                        raise RemoteError(
                            resp.status, {"errcode": "M_TOO_LARGE", "error": "response too large"}
                        )
                    return resp.status, dict(resp.headers), raw
            except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as e:
                where = f"{method} {destination}{path.split('?')[0]}"
                raise Unreachable(f"{where}: {type(e).__name__}: {e}") from None

    async def get(self, destination: str, path: str, **kw: Any) -> Any:
        return await self.request("GET", destination, path, **kw)

    async def put(self, destination: str, path: str, body: Any, **kw: Any) -> Any:
        return await self.request("PUT", destination, path, body=body, **kw)

    async def post(self, destination: str, path: str, body: Any, **kw: Any) -> Any:
        return await self.request("POST", destination, path, body=body, **kw)

    # Key fetching (used by the key ring) ----------------------------------------------------

    async def fetch_server_keys(self, server_name: str) -> dict[str, Any]:
        body = await self.request("GET", server_name, "/_matrix/key/v2/server", signed=False, timeout=15)
        if not isinstance(body, dict):
            raise RemoteError(200, {"errcode": "M_NOT_JSON", "error": "key response is not an object"})
        return body

    async def query_notary(self, notary: str, servers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        body = await self.request(
            "POST", notary, "/_matrix/key/v2/query", body={"server_keys": servers}, signed=False, timeout=15
        )
        keys = body.get("server_keys") if isinstance(body, dict) else None
        return [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []
