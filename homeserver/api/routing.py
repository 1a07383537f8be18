"""Route lookup by literal API version.

aiohttp files a route under its path up to the first variable, and looks a request up by
walking its path from the longest prefix to `/`. Every client route starts with the
version variable (`/_matrix/client/{_ver}/...`, so that r0 and v3 share one handler), so
all of them shared the key `/_matrix/client`, and each request was matched against them
one regex at a time in registration order: 22 µs to find `/send`, 46 µs to find `/sync`
(registered near the end), on every request. Filing each route under the literal
prefixes its versions produce (`/_matrix/client/v3/rooms`, `/_matrix/client/r0/sync`)
leaves a few candidates per request.

This reaches into the router's index, which aiohttp does not export; if it is not there
(another aiohttp), routes stay where they are and resolve as before, only slower. A test
checks that the index is used.
"""

from __future__ import annotations

import re

from aiohttp import web

# `{_ver:(?:r0|v3)}` in a route's regex, as aiohttp compiles it.
_VERSION_GROUP = re.compile(r"\(\?P<_ver>\(\?:([a-z0-9|]+)\)\)")
_VERSIONED_PREFIXES = ("/_matrix/client", "/_matrix/media")


def _keys(resource: web.AbstractResource, prefix: str) -> list[str] | None:
    """The literal index keys of a versioned route under `prefix`, or None."""
    info = resource.get_info()
    pattern = info.get("pattern")
    if not isinstance(pattern, re.Pattern):
        return None
    versions = _VERSION_GROUP.search(pattern.pattern)
    head = prefix + "/{_ver}"
    if versions is None or not resource.canonical.startswith(head + "/"):
        return None
    rest = resource.canonical[len(head) :]
    if "{" in rest:
        rest = rest.partition("{")[0].rpartition("/")[0]
    return [f"{prefix}/{version}{rest}".rstrip("/") for version in versions.group(1).split("|")]


def index_by_version(router: web.UrlDispatcher) -> int:
    """File versioned routes under their literal prefixes; returns how many were moved."""
    index = getattr(router, "_resource_index", None)
    if not isinstance(index, dict):
        return 0
    moved = 0
    for prefix in _VERSIONED_PREFIXES:
        kept = []
        for resource in index.get(prefix, []):
            keys = _keys(resource, prefix)
            if keys is None:
                kept.append(resource)
                continue
            for key in keys:
                index.setdefault(key, []).append(resource)
            moved += 1
        if prefix in index:
            index[prefix] = kept
    return moved
