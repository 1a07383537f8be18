"""Media: upload, authenticated download and thumbnails with real clients; limits and headers raw."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from mautrix.client import Client
from mautrix.types import UserID
from nio import DownloadResponse, ThumbnailResponse, UploadResponse
from PIL import Image

from tests.support.nio_clients import nio_client
from tests.support.server import RunningServer, run_server


def png_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(out, "PNG")
    return out.getvalue()


@asynccontextmanager
async def mautrix_client(server: RunningServer, localpart: str) -> AsyncIterator[Client]:
    await server.register(localpart)
    client = Client(mxid=UserID(f"@{localpart}:{server.server_name}"), base_url=server.base_url)
    try:
        await client.login(password="password")
        yield client
    finally:
        await client.api.session.close()


async def test_nio_upload_download_and_thumbnail(server: RunningServer) -> None:
    image = png_bytes(1000, 700)
    async with nio_client(server, "alice") as alice:
        resp, _keys = await alice.upload(
            io.BytesIO(image), content_type="image/png", filename="cat photo.png", filesize=len(image)
        )
        assert isinstance(resp, UploadResponse), resp
        assert resp.content_uri.startswith(f"mxc://{server.server_name}/")
        got = await alice.download(resp.content_uri)
        assert isinstance(got, DownloadResponse), got
        assert got.body == image
        assert got.content_type == "image/png"
        assert got.filename == "cat photo.png"

        server_name, media_id = resp.content_uri[len("mxc://") :].split("/")
        thumb = await alice.thumbnail(server_name, media_id, 300, 200)
        assert isinstance(thumb, ThumbnailResponse), thumb
        img = Image.open(io.BytesIO(thumb.body))
        # Rounded up to 320x240 "scale": fits in the box, keeps the aspect ratio, never smaller than asked.
        assert img.width == 320 and img.height <= 240 and img.height >= 200
        again = await alice.thumbnail(server_name, media_id, 300, 200)
        assert isinstance(again, ThumbnailResponse) and again.body == thumb.body


async def test_mautrix_upload_and_download(server: RunningServer) -> None:
    async with mautrix_client(server, "bob") as bob:
        mxc = await bob.upload_media(b"hello media", mime_type="text/plain", filename="hello.txt")
        assert await bob.download_media(mxc) == b"hello media"
        thumb = await bob.download_thumbnail(await bob.upload_media(png_bytes(64, 64), mime_type="image/png"),
                                             width=32, height=32, resize_method="crop")
        img = Image.open(io.BytesIO(thumb))
        assert (img.width, img.height) == (32, 32)


async def test_download_requires_auth_and_headers_are_safe(server: RunningServer) -> None:
    login = await server.login("carol")
    headers = {"Authorization": f"Bearer {login['access_token']}"}
    base = server.base_url
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/_matrix/media/v3/upload", params={"filename": "x.html"},
                          data=b"<script>alert(1)</script>",
                          headers={**headers, "Content-Type": "text/html"}) as r:
            assert r.status == 200
            mxc = (await r.json())["content_uri"]
        media_path = mxc[len("mxc://"):]
        async with s.get(f"{base}/_matrix/client/v1/media/download/{media_path}") as r:
            assert r.status == 401
            assert (await r.json())["errcode"] == "M_MISSING_TOKEN"
        async with s.get(f"{base}/_matrix/client/v1/media/download/{media_path}", headers=headers) as r:
            assert r.status == 200
            assert r.headers["Content-Disposition"].startswith("attachment")
            assert "sandbox" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with s.get(f"{base}/_matrix/client/v1/media/download/{server.server_name}/..%2F..%2Fetc",
                         headers=headers) as r:
            assert r.status == 404
        async with s.get(f"{base}/_matrix/client/v1/media/config", headers=headers) as r:
            assert (await r.json())["m.upload.size"] == server.config.limits.max_upload_bytes
        async with s.get(f"{base}/_matrix/client/v1/media/preview_url", headers=headers,
                         params={"url": "http://127.0.0.1/"}) as r:
            assert r.status == 404 and (await r.json())["errcode"] == "M_UNRECOGNIZED"
        # Thumbnailing something that is not an image is refused cleanly.
        async with s.get(f"{base}/_matrix/client/v1/media/thumbnail/{media_path}", headers=headers,
                         params={"width": "32", "height": "32"}) as r:
            assert r.status == 400


async def test_upload_limit_and_async_upload(tmp_path: object) -> None:
    async with run_server(str(tmp_path), limits={"max_upload_bytes": 3 * 1024 * 1024}) as server:
        login = await server.login("dave")
        headers = {"Authorization": f"Bearer {login['access_token']}"}
        base = server.base_url
        async with aiohttp.ClientSession() as s:
            # Bigger than the app's 1 MiB JSON limit but within the media limit: accepted.
            big = b"x" * (2 * 1024 * 1024)
            async with s.post(f"{base}/_matrix/media/v3/upload", data=big,
                              headers={**headers, "Content-Type": "application/octet-stream"}) as r:
                assert r.status == 200, await r.text()
            too_big = b"x" * (3 * 1024 * 1024 + 1)
            async with s.post(f"{base}/_matrix/media/v3/upload", data=too_big,
                              headers={**headers, "Content-Type": "application/octet-stream"}) as r:
                assert r.status == 413
                assert (await r.json())["errcode"] == "M_TOO_LARGE"

            async with s.post(f"{base}/_matrix/media/v1/create", headers=headers) as r:
                created = await r.json()
                assert r.status == 200 and created["unused_expires_at"] > 0
            media_path = created["content_uri"][len("mxc://"):]
            async with s.get(f"{base}/_matrix/client/v1/media/download/{media_path}", headers=headers,
                             params={"timeout_ms": "0"}) as r:
                assert r.status == 504 and (await r.json())["errcode"] == "M_NOT_YET_UPLOADED"
            async with s.put(f"{base}/_matrix/media/v3/upload/{media_path}", data=b"later",
                             headers={**headers, "Content-Type": "text/plain"}) as r:
                assert r.status == 200, await r.text()
            async with s.put(f"{base}/_matrix/media/v3/upload/{media_path}", data=b"again",
                             headers={**headers, "Content-Type": "text/plain"}) as r:
                assert r.status == 409 and (await r.json())["errcode"] == "M_CANNOT_OVERWRITE_MEDIA"
            async with s.get(f"{base}/_matrix/client/v1/media/download/{media_path}", headers=headers) as r:
                assert await r.read() == b"later"
                assert r.headers["Content-Disposition"].startswith("inline")
            # Legacy unauthenticated download for old clients.
            async with s.get(f"{base}/_matrix/media/v3/download/{media_path}") as r:
                assert r.status == 200 and await r.read() == b"later"
