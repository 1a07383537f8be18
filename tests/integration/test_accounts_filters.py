"""Filter upload and download over real HTTP (raw requests and matrix-nio)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
from nio import AsyncClient, UploadFilterResponse

from tests.support.http import RawClient
from tests.support.server import RunningServer


async def user(http: aiohttp.ClientSession, server: RunningServer, localpart: str) -> RawClient:
    body = await server.login(localpart)
    return RawClient(http, server.base_url, body["access_token"], body["user_id"])


FILTER = {
    "event_fields": ["type", "content.body"],
    "event_format": "client",
    "presence": {"not_types": ["*"]},
    "room": {
        "timeline": {"limit": 20, "types": ["m.room.message"], "lazy_load_members": True},
        "state": {"lazy_load_members": True},
        "include_leave": False,
    },
}


async def test_filter_roundtrip(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await user(http, server, "alice")
    base = f"/user/{quote(alice.user_id)}/filter"
    first = await alice.ok("POST", base, json=FILTER)
    assert isinstance(first["filter_id"], str)
    assert await alice.ok("GET", f"{base}/{first['filter_id']}") == FILTER
    second = await alice.ok("POST", base, json={})
    assert second["filter_id"] != first["filter_id"]
    status, body = await alice.request("GET", f"{base}/999")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await alice.request("GET", f"{base}/not-a-number")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    # The filter can be used by /sync.
    await alice.sync(filter=first["filter_id"])


async def test_filter_errors(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await user(http, server, "alice")
    bob = await user(http, server, "bob")
    base = f"/user/{quote(alice.user_id)}/filter"
    filter_id = (await alice.ok("POST", base, json={}))["filter_id"]
    status, body = await bob.request("POST", base, json={})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await bob.request("GET", f"{base}/{filter_id}")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    bad: dict[str, Any]
    for bad in (
        {"event_format": "xml"},
        {"event_fields": "type"},
        {"room": {"timeline": {"limit": "ten"}}},
        {"room": {"rooms": [1]}},
        {"presence": []},
        {"room": {"state": {"lazy_load_members": "yes"}}},
    ):
        status, body = await alice.request("POST", base, json=bad)
        assert (status, body["errcode"]) == (400, "M_BAD_JSON"), bad
    status, body = await alice.request("POST", base, json=[])
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")


async def test_nio_upload_filter(server: RunningServer) -> None:
    await server.register("nio", "pw")
    client = AsyncClient(server.base_url, "nio")
    try:
        await client.login("pw")
        resp = await client.upload_filter(room={"timeline": {"limit": 5}})
        assert isinstance(resp, UploadFilterResponse), resp
        stored = await server.hs.filters.get(client.user_id, resp.filter_id)
        assert stored is not None and stored["room"] == {"timeline": {"limit": 5}}
    finally:
        await client.close()


async def test_sync_filters_are_per_user_and_errors_repeat(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    # /sync caches parsed filters: a filter ID stays the owner's, and bad filters keep failing.
    alice = await user(http, server, "alice")
    bob = await user(http, server, "bob")
    filter_id = (await alice.ok("POST", f"/user/{quote(alice.user_id)}/filter", json=FILTER))["filter_id"]
    for _ in range(2):
        await alice.sync(filter=filter_id)
        status, body = await bob.request("GET", "/sync", params={"filter": filter_id, "timeout": "0"})
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, body = await alice.request("GET", "/sync", params={"filter": "{not json", "timeout": "0"})
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")
        inline = await alice.sync(filter='{"room": {"timeline": {"limit": 1}}}')
        assert "next_batch" in inline
