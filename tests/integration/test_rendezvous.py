"""QR code sign-in's rendezvous sessions (MSC4108): create, poll with ETags, conditional
writes, expiry, limits; and matrix-js-sdk's own MSC4108RendezvousSession carrying messages
both ways between two parties (tests/js/rendezvous_client.mjs)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from homeserver.api.rendezvous import MAX_BODY, TTL_MS
from tests.support.js import run_node_script
from tests.support.server import RunningServer, run_server

PATH = "/_matrix/client/unstable/org.matrix.msc4108/rendezvous"


@pytest.fixture
async def srv(tmp_path: object) -> AsyncIterator[RunningServer]:
    async with run_server(str(tmp_path), oauth={"enabled": True}) as s:
        yield s


async def create(http: aiohttp.ClientSession, srv: RunningServer, body: str) -> tuple[str, str]:
    async with http.post(srv.base_url + PATH, data=body, headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 201, await resp.text()
        assert resp.headers["Expires"] and resp.headers["Last-Modified"]
        return (await resp.json())["url"], resp.headers["ETag"]


async def test_a_session_round_trip(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(srv.base_url + "/_matrix/client/versions") as resp:
        assert (await resp.json())["unstable_features"]["org.matrix.msc4108"] is True
    url, etag = await create(http, srv, "hello from A")
    assert url.startswith(srv.base_url + PATH + "/")
    async with http.get(url) as resp:
        assert (resp.status, resp.headers["ETag"], resp.content_type) == (200, etag, "text/plain")
        assert await resp.text() == "hello from A"
    async with http.get(url, headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
    # B answers, conditionally on what it read.
    async with http.put(url, data="hello from B", headers={"If-Match": etag}) as resp:
        assert resp.status == 202
        second = resp.headers["ETag"]
    assert second != etag
    async with http.get(url, headers={"If-None-Match": etag}) as resp:
        assert (resp.status, await resp.text(), resp.headers["ETag"]) == (200, "hello from B", second)
    # A stale or missing If-Match changes nothing.
    async with http.put(url, data="late", headers={"If-Match": etag}) as resp:
        assert (resp.status, (await resp.json())["errcode"]) == (412, "M_CONCURRENT_WRITE")
    async with http.put(url, data="blind") as resp:
        assert resp.status == 400
    async with http.get(url) as resp:
        assert await resp.text() == "hello from B"
    # Browsers may read the ETag (the client stops otherwise).
    async with http.options(url) as resp:
        assert "ETag" in resp.headers["Access-Control-Expose-Headers"]
        assert "If-Match" in resp.headers["Access-Control-Allow-Headers"]
    async with http.delete(url) as resp:
        assert resp.status == 204
    async with http.get(url) as resp:
        assert resp.status == 404


async def test_limits_and_expiry(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.post(srv.base_url + PATH, data="x" * (MAX_BODY + 1)) as resp:
        assert (resp.status, (await resp.json())["errcode"]) == (413, "M_TOO_LARGE")
    url, etag = await create(http, srv, "soon gone")
    async with http.put(url, data="y" * (MAX_BODY + 1), headers={"If-Match": etag}) as resp:
        assert resp.status == 413
    later = srv.hs.clock.time_ms() + TTL_MS + 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(srv.hs.clock, "time_ms", lambda: later)
        async with http.get(url) as resp:
            assert resp.status == 404
        async with http.put(url, data="z", headers={"If-Match": etag}) as resp:
            assert resp.status == 404
    async with http.get(srv.base_url + PATH + "/unknown") as resp:
        assert resp.status == 404


async def test_off_without_oauth(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.post(server.base_url + PATH, data="x") as resp:
        assert resp.status == 404
    async with http.get(server.base_url + "/_matrix/client/versions") as resp:
        assert (await resp.json())["unstable_features"]["org.matrix.msc4108"] is False


async def test_matrix_js_sdk_rendezvous_session(srv: RunningServer) -> None:
    result = await run_node_script("rendezvous_client.mjs", {"HS_URL": srv.base_url})
    assert result["url"].startswith(srv.base_url + PATH + "/")
    assert result["received"] == [
        "ping from the device showing the code",
        "pong from the scanning device",
        "done",
    ]
    assert result["closed"] == 404
