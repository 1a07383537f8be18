"""Local media for admins: information, quarantine, deletion (one, by age and size, all of
a user's), and a user's media list; deleted media is gone from disk and from downloads."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.integration.test_media import png_bytes
from tests.security.support import Client
from tests.security.test_admin_api import A1, user
from tests.support.server import RunningServer


async def upload(client: Client, data: bytes, content_type: str = "text/plain") -> str:
    url = f"{client.base_url}/_matrix/media/v3/upload"
    headers = {"Authorization": f"Bearer {client.token}", "Content-Type": content_type}
    async with client.session.post(url, data=data, headers=headers) as resp:
        assert resp.status == 200
        mxc = str((await resp.json())["content_uri"])
    return mxc.rsplit("/", 1)[1]


async def download(client: Client, server: RunningServer, media_id: str, thumbnail: bool = False) -> int:
    kind = "thumbnail" if thumbnail else "download"
    url = f"{server.base_url}/_matrix/client/v1/media/{kind}/{server.server_name}/{media_id}"
    params = {"width": "32", "height": "32"} if thumbnail else None
    async with client.session.get(
        url, headers={"Authorization": f"Bearer {client.token}"}, params=params
    ) as resp:
        await resp.read()
        return resp.status


def any_exist(paths: list[str]) -> bool:
    return any(os.path.exists(p) for p in paths)


def files_of(server: RunningServer, media_id: str) -> list[str]:
    root = Path(server.hs.config.resolve_path(server.hs.config.media_store_path))
    return [str(p) for p in root.rglob("*") if p.is_file() and media_id[4:] in str(p)]


async def test_quarantine_and_delete(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    picture = await upload(alice, png_bytes(64, 64), "image/png")
    note = await upload(alice, b"a note")
    media = f"{A1}/media/{quote(server.server_name)}"

    got = (await admin.ok("GET", f"{media}/{note}"))["media_info"]
    assert (got["media_id"], got["media_length"], got["media_type"], got["quarantined"]) == (
        note,
        6,
        "text/plain",
        False,
    )
    await admin.ok("POST", f"{A1}/media/quarantine/{quote(server.server_name)}/{note}")
    assert await download(alice, server, note) == 404
    assert (await admin.ok("GET", f"{media}/{note}"))["media_info"]["quarantined"] is True
    await admin.ok("POST", f"{A1}/media/unquarantine/{quote(server.server_name)}/{note}")
    assert await download(alice, server, note) == 200

    assert await download(alice, server, picture, thumbnail=True) == 200
    on_disk = files_of(server, picture)
    assert len(on_disk) >= 2  # the picture and its thumbnail
    assert await admin.ok("DELETE", f"{media}/{picture}") == {"deleted_media": [picture], "total": 1}
    assert await download(alice, server, picture) == 404
    assert not any_exist(on_disk)
    for method, path in (
        ("DELETE", f"{media}/{picture}"),
        ("GET", f"{media}/{picture}"),
        ("POST", f"{A1}/media/quarantine/{quote(server.server_name)}/{picture}"),
    ):
        status, out = await admin.request(method, path)
        assert (status, out["errcode"]) == (404, "M_NOT_FOUND"), path
    # Media of another server that is not cached here.
    status, out = await admin.request("DELETE", f"{A1}/media/elsewhere.example/{note}")
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")
    assert await download(alice, server, note) == 200


async def test_delete_by_age_and_size_keeps_avatars(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(server, http, "root", admin=True)
    bob = await user(server, http, "bob")
    small = await upload(bob, b"x")
    big = await upload(bob, b"y" * 1000)
    avatar = await upload(bob, b"z" * 1000)
    room_avatar = await upload(bob, b"w" * 1000)
    await bob.ok(
        "PUT",
        f"/profile/{quote(bob.user_id)}/avatar_url",
        json={"avatar_url": f"mxc://{server.server_name}/{avatar}"},
    )
    room = await bob.create_room()
    await bob.ok(
        "PUT",
        f"/rooms/{quote(room)}/state/m.room.avatar",
        json={"url": f"mxc://{server.server_name}/{room_avatar}"},
    )
    await asyncio.sleep(0.01)  # (timestamps are in ms)
    later = await upload(bob, b"v" * 1000)
    now = int(time.time() * 1000) + 1
    # The cut-off: when `later` was uploaded, so it is not before it.
    cut = (await admin.ok("GET", f"{A1}/media/{quote(server.server_name)}/{later}"))["media_info"][
        "created_ts"
    ]
    params = {"before_ts": str(cut), "size_gt": "10"}
    deleted: dict[str, Any] = await admin.ok("POST", f"{A1}/media/delete", params=params)
    assert deleted == {"deleted_media": [big], "total": 1}
    assert {await download(bob, server, m) for m in (small, avatar, room_avatar, later)} == {200}
    deleted = await admin.ok(
        "POST", f"{A1}/media/delete", params={"before_ts": str(now), "keep_profiles": "false"}
    )
    assert set(deleted["deleted_media"]) == {small, avatar, room_avatar, later}
    for params in ({}, {"before_ts": "x"}, {"before_ts": "1", "keep_profiles": "maybe"}):
        status, out = await admin.request("POST", f"{A1}/media/delete", params=params)
        assert status == 400 and out["errcode"] in ("M_MISSING_PARAM", "M_INVALID_PARAM"), params


async def test_a_users_media(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    carol = await user(server, http, "carol")
    dave = await user(server, http, "dave")
    ids = []
    for i in range(3):
        ids.append(await upload(carol, f"item {i}".encode()))
        await asyncio.sleep(0.002)
    kept = await upload(dave, b"dave's")
    path = f"{A1}/users/{quote(carol.user_id)}/media"
    page = await admin.ok("GET", path, params={"limit": "2"})
    assert [m["media_id"] for m in page["media"]] == [ids[2], ids[1]]
    assert (page["total"], page["next_token"]) == (3, 2)
    rest = await admin.ok("GET", path, params={"from": "2"})
    assert [m["media_id"] for m in rest["media"]] == [ids[0]] and "next_token" not in rest
    oldest_first = await admin.ok("GET", path, params={"dir": "f"})
    assert [m["media_id"] for m in oldest_first["media"]] == ids
    deleted = await admin.ok("DELETE", path)
    assert sorted(deleted["deleted_media"]) == sorted(ids) and deleted["total"] == 3
    assert (await admin.ok("GET", path))["total"] == 0
    assert await download(dave, server, kept) == 200
    status, out = await admin.request("GET", f"{A1}/users/{quote('@nobody:' + server.server_name)}/media")
    assert (status, out["errcode"]) == (404, "M_NOT_FOUND")


async def test_media_statistics_per_user(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    erin = await user(server, http, "erin")
    frank = await user(server, http, "frank")
    await erin.ok("PUT", f"/profile/{quote(erin.user_id)}/displayname", json={"displayname": "Erin 100%"})
    before = int(time.time() * 1000)
    for data in (b"a" * 10, b"b" * 20):
        await upload(erin, data)
    await upload(frank, b"c" * 100)
    path = f"{A1}/statistics/users/media"

    every = await admin.ok("GET", path)
    assert every["total"] == 2 and "next_token" not in every
    assert every["users"] == [
        {"user_id": erin.user_id, "displayname": "Erin 100%", "media_count": 2, "media_length": 30},
        {"user_id": frank.user_id, "displayname": "frank", "media_count": 1, "media_length": 100},
    ]
    by_size = await admin.ok("GET", path, params={"order_by": "media_length", "dir": "b", "limit": "1"})
    assert [u["user_id"] for u in by_size["users"]] == [frank.user_id] and by_size["next_token"] == 1
    by_count = await admin.ok("GET", path, params={"order_by": "media_count", "dir": "b"})
    assert [u["user_id"] for u in by_count["users"]] == [erin.user_id, frank.user_id]
    # The search looks at user IDs and display names; "%" is a character, not a wildcard.
    found = await admin.ok("GET", path, params={"search_term": "%"})
    assert [u["user_id"] for u in found["users"]] == [erin.user_id]
    assert (await admin.ok("GET", path, params={"search_term": "FRANK"}))["total"] == 1
    assert (await admin.ok("GET", path, params={"until_ts": str(before - 1)}))["total"] == 0
    assert (await admin.ok("GET", path, params={"from_ts": str(before)}))["total"] == 2
    later = str(int(time.time() * 1000) + 60_000)
    assert (await admin.ok("GET", path, params={"from_ts": later}))["total"] == 0

    for params in (
        {"order_by": "size"},
        {"dir": "x"},
        {"from_ts": "5", "until_ts": "4"},
        {"search_term": ""},
    ):
        status, out = await admin.request("GET", path, params=params)
        assert (status, out["errcode"]) == (400, "M_INVALID_PARAM"), params
    status, out = await erin.request("GET", path)
    assert (status, out["errcode"]) == (403, "M_FORBIDDEN")
