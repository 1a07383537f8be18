"""Server discovery (server-server API "Resolving server names") and address filtering.

`ServerResolver.resolve(server_name)` returns where to connect and what to present:
1. IP literal (with or without port): that address, port 8448 by default.
2. Hostname with an explicit port: that host and port.
3. `/.well-known/matrix/server` (cached per its Cache-Control, errors for an hour), whose
   `m.server` is then resolved by the same rules (minus another well-known lookup).
4. SRV `_matrix-fed._tcp` (then the deprecated `_matrix._tcp`) when a DNS library is installed.
5. The hostname on port 8448.

`AddressFilter` refuses private, loopback and other special ranges unless whitelisted, so a
malicious server name cannot point this server at its own network.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from homeserver.clock import Clock

log = logging.getLogger(__name__)

DEFAULT_PORT = 8448
WELL_KNOWN_DEFAULT_TTL_MS = 24 * 3600 * 1000
WELL_KNOWN_MAX_TTL_MS = 48 * 3600 * 1000
WELL_KNOWN_ERROR_TTL_MS = 3600 * 1000
_CACHE_LIMIT = 5000

DEFAULT_BLACKLIST = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::1/128", "fe80::/10", "fc00::/7", "2001:db8::/32", "ff00::/8", "fec0::/10", "::/128",
]  # fmt: skip


class AddressFilter:
    def __init__(self, whitelist: list[str], blacklist: list[str] | None = None) -> None:
        self.whitelist = [ipaddress.ip_network(n, strict=False) for n in whitelist]
        self.blacklist = [ipaddress.ip_network(n, strict=False) for n in (blacklist or DEFAULT_BLACKLIST)]

    def allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if any(ip in net for net in self.whitelist):
            return True
        return not any(ip in net for net in self.blacklist)


class FilteringResolver(AbstractResolver):
    """aiohttp resolver that drops addresses the filter refuses."""

    def __init__(self, address_filter: AddressFilter) -> None:
        self.filter = address_filter
        self.inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = [r for r in await self.inner.resolve(host, port, family) if self.filter.allowed(r["host"])]
        if not results:
            raise OSError(f"no permitted address for {host}")
        return results

    async def close(self) -> None:
        await self.inner.close()


@dataclass(frozen=True, slots=True)
class Target:
    host: str  # what to connect to (also the name the TLS certificate must match)
    port: int
    host_header: str


_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(\d{1,5}))?$")


def split_server_name(name: str) -> tuple[str, int | None]:
    m = _HOST_PORT.match(name)
    if m is None:
        raise ValueError(f"invalid server name {name!r}")
    host, port = m.group(1), m.group(2)
    return host, int(port) if port else None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


# Fetches https://<host>/.well-known/matrix/server -> (JSON body or None, cache TTL ms).
WellKnownFetch = Callable[[str], Awaitable[tuple[Any, int | None]]]


class ServerResolver:
    def __init__(self, clock: Clock, fetch_well_known: WellKnownFetch) -> None:
        self.clock = clock
        self.fetch_well_known = fetch_well_known
        self._well_known: OrderedDict[str, tuple[str | None, int]] = OrderedDict()

    async def resolve(self, server_name: str) -> Target:
        host, port = split_server_name(server_name)
        if is_ip_literal(host) or port is not None:
            return Target(host.strip("[]"), port or DEFAULT_PORT, server_name)
        delegated = await self._delegation(host)
        if delegated is not None:
            try:
                d_host, d_port = split_server_name(delegated)
            except ValueError:
                d_host, d_port = host, None
            else:
                if is_ip_literal(d_host) or d_port is not None:
                    return Target(d_host.strip("[]"), d_port or DEFAULT_PORT, delegated)
                srv = await _srv_lookup(d_host)
                if srv is not None:
                    return Target(srv[0], srv[1], d_host)
                return Target(d_host, DEFAULT_PORT, d_host)
        srv = await _srv_lookup(host)
        if srv is not None:
            return Target(srv[0], srv[1], server_name)
        return Target(host, DEFAULT_PORT, server_name)

    async def _delegation(self, host: str) -> str | None:
        now = self.clock.time_ms()
        cached = self._well_known.get(host)
        if cached is not None and cached[1] > now:
            return cached[0]
        result: str | None = None
        ttl = WELL_KNOWN_ERROR_TTL_MS
        try:
            body, max_age = await self.fetch_well_known(host)
            value = body.get("m.server") if isinstance(body, dict) else None
            if isinstance(value, str) and value:
                result = value
                ttl = min(
                    max_age if max_age is not None else WELL_KNOWN_DEFAULT_TTL_MS, WELL_KNOWN_MAX_TTL_MS
                )
        except Exception as e:
            log.debug("well-known lookup for %s failed: %s", host, e)
        self._well_known[host] = (result, now + ttl)
        self._well_known.move_to_end(host)
        while len(self._well_known) > _CACHE_LIMIT:
            self._well_known.popitem(last=False)
        return result


async def _srv_lookup(host: str) -> tuple[str, int] | None:
    """The best SRV target for the host, when dnspython is available and DNS answers."""
    try:
        import dns.asyncresolver  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    for service in ("_matrix-fed._tcp.", "_matrix._tcp."):
        try:
            answer = await dns.asyncresolver.resolve(service + host, "SRV", lifetime=5)
        except Exception:
            continue
        records = sorted(answer, key=lambda r: (r.priority, -r.weight))
        if records:
            return str(records[0].target).rstrip("."), int(records[0].port)
    return None


def parse_max_age(cache_control: str | None) -> int | None:
    if not cache_control:
        return None
    m = re.search(r"max-age=(\d+)", cache_control)
    return int(m.group(1)) * 1000 if m else None
