"""URL previews: OpenGraph data from a local page, the address guard, and off by default."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from homeserver.handlers.preview import AddressGuard, parse_open_graph
from tests.support.http import RawClient
from tests.support.server import RunningServer, free_port, run_server

AUTHED = "/_matrix/client/v1/media/preview_url"
LEGACY = "/_matrix/media/v3/preview_url"
LOOPBACK = ["127.0.0.0/8", "::1/128"]
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
PAGE = """<!doctype html><html><head>
<meta charset="utf-8"><title>Ignored title</title>
<meta property="og:title" content="A  page &amp; its title">
<meta property="og:description" content="What the page is about">
<meta property="og:image" content="/pic.png">
<meta property="og:image:width" content="1"><meta property="og:image:height" content="1">
</head><body>hello</body></html>"""


@asynccontextmanager
async def site() -> AsyncIterator[tuple[str, list[str]]]:
    hits: list[str] = []

    async def page(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text=PAGE, content_type="text/html")

    async def pic(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=PNG, content_type="image/png")

    async def plain(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(
            text="<html><head><title> Just a title </title></head></html>", content_type="text/html"
        )

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound(str(request.query["to"]))

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_get("/pic.png", pic)
    app.router.add_get("/plain", plain)
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


@asynccontextmanager
async def client(srv: RunningServer) -> AsyncIterator[RawClient]:
    async with aiohttp.ClientSession() as session:
        login = await srv.login("alice")
        yield RawClient(session, srv.base_url, login["access_token"], login["user_id"])


async def test_preview_reads_open_graph_and_stores_the_image(tmp_path: object) -> None:
    media = {"url_preview_enabled": True, "url_preview_allowed_ranges": LOOPBACK}
    async with site() as (base, hits), run_server(str(tmp_path), media=media) as srv, client(srv) as alice:
        status, body = await alice.request("GET", AUTHED, params={"url": base + "/page"})
        assert status == 200, body
        assert body["og:title"] == "A page & its title"
        assert body["og:description"] == "What the page is about"
        assert body["og:image"].startswith("mxc://")
        assert body["og:image:type"] == "image/png"
        assert body["matrix:image:size"] == len(PNG)
        assert (body["og:image:width"], body["og:image:height"]) == (1, 1)
        # The image is served from the media repository.
        server_name, media_id = body["og:image"].removeprefix("mxc://").split("/")
        async with alice.session.get(
            f"{srv.base_url}/_matrix/client/v1/media/download/{server_name}/{media_id}",
            headers={"Authorization": f"Bearer {alice.token}"},
        ) as resp:
            assert resp.status == 200
            assert await resp.read() == PNG

        # Cached: the legacy endpoint gives the same answer without fetching again.
        fetched = len(hits)
        status, again = await alice.request("GET", LEGACY, params={"url": base + "/page"})
        assert (status, again) == (200, body)
        assert len(hits) == fetched

        # Without OpenGraph tags the <title> is used; redirects are followed.
        status, body = await alice.request("GET", AUTHED, params={"url": f"{base}/redirect?to={base}/plain"})
        assert (status, body) == (200, {"og:title": "Just a title"})

        # An image URL previews as the image itself.
        status, body = await alice.request("GET", AUTHED, params={"url": base + "/pic.png"})
        assert status == 200 and body["og:image"].startswith("mxc://")

        status, body = await alice.request("GET", AUTHED, params={"url": "ftp://example.org/x"})
        assert status == 400
        status, body = await alice.request("GET", AUTHED)
        assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
        alice.token = None
        status, body = await alice.request("GET", AUTHED, params={"url": base + "/page"})
        assert status == 401


async def test_loopback_is_refused_unless_allowed(tmp_path: object) -> None:
    media = {"url_preview_enabled": True}
    async with site() as (base, hits), run_server(str(tmp_path), media=media) as srv, client(srv) as alice:
        for url in (base + "/page", base.replace("127.0.0.1", "localhost") + "/page"):
            status, body = await alice.request("GET", AUTHED, params={"url": url})
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), url
        assert hits == []


async def test_redirect_to_a_refused_address_is_refused(tmp_path: object) -> None:
    # Only the redirecting page's exact address is allowed; its target (another loopback
    # address) is checked again after the redirect.
    media = {"url_preview_enabled": True, "url_preview_allowed_ranges": ["127.0.0.1/32"]}
    async with site() as (base, hits), run_server(str(tmp_path), media=media) as srv, client(srv) as alice:
        target = base.replace("127.0.0.1", "127.0.0.2") + "/page"
        status, body = await alice.request("GET", AUTHED, params={"url": f"{base}/redirect?to={target}"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        assert hits == ["/redirect"]


async def test_previews_are_off_by_default(server: RunningServer) -> None:
    async with client(server) as alice:
        for path in (AUTHED, LEGACY):
            status, body = await alice.request("GET", path, params={"url": "http://127.0.0.1/"})
            assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")


def test_address_guard_ranges() -> None:
    guard = AddressGuard([])
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "2002:7f00:1::",
        "fd00::1",
        "0.0.0.0",
        "not-an-ip",
    ):
        assert not guard.allowed(address), address
    for address in ("93.184.216.34", "2606:4700::1111"):
        assert guard.allowed(address), address
    assert AddressGuard(["127.0.0.0/8"]).allowed("127.0.0.1")


def test_parse_falls_back_and_survives_bad_markup() -> None:
    assert parse_open_graph('<meta name="description" content=" x  y "><title>T</title>') == {
        "og:title": "T",
        "og:description": "x y",
    }
    assert parse_open_graph("<html><meta property='og:title' content='ok'><<<</") == {"og:title": "ok"}
