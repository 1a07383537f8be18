"""Versioned routes are found through aiohttp's index by their literal version, over HTTP."""

from __future__ import annotations

import aiohttp

from homeserver.api.routing import index_by_version
from tests.support.server import RunningServer


def test_no_versioned_route_is_left_under_the_bare_prefix(server: RunningServer) -> None:
    index = server.runner.app.router._resource_index
    # Everything under /_matrix/client is unversioned (e.g. /versions); nothing matches
    # a version variable there any more.
    assert all("{_ver}" not in r.canonical for r in index.get("/_matrix/client", []))
    sync = [r.canonical for r in index["/_matrix/client/v3/sync"]]
    assert sync == ["/_matrix/client/{_ver}/sync"]
    assert [r.canonical for r in index["/_matrix/client/r0/sync"]] == sync
    # Done once: a second pass finds nothing to move.
    assert index_by_version(server.runner.app.router) == 0


async def test_versions_still_route_as_declared(server: RunningServer, http: aiohttp.ClientSession) -> None:
    base = server.base_url
    cases = [
        ("GET", "/_matrix/client/versions", 200),
        ("GET", "/_matrix/client/v3/sync", 401),  # found, then refused for want of a token
        ("GET", "/_matrix/client/r0/sync", 401),
        ("GET", "/_matrix/client/v1/sync", 404),  # v1 is not one of /sync's versions
        ("GET", "/_matrix/client/v1/rooms/!r:x/relations/$e", 401),
        ("GET", "/_matrix/client/v3/rooms/!r:x/relations/$e", 404),  # relations is v1 only
        ("PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/t", 401),
        ("DELETE", "/_matrix/client/v3/sync", 405),  # the path is known, the method is not
        ("GET", "/_matrix/media/v3/config", 401),
        ("GET", "/_matrix/client/v3/no_such_endpoint", 404),
    ]
    for method, path, status in cases:
        async with http.request(method, base + path) as resp:
            assert resp.status == status, (method, path, resp.status)
