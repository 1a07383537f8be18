"""Quarantine for admins: by ID (with the copies of the same bytes, and later uploads of
them), a room's media, a user's media; protected media is skipped; the room media list."""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import quote

import aiohttp

from homeserver.handlers.cs_services import services
from tests.integration.test_media import png_bytes
from tests.security.support import Client
from tests.security.test_admin_api import A1, user
from tests.security.test_admin_media import download, upload
from tests.support.server import RunningServer

TXNS = itertools.count()
SPAM = b"the same spam, uploaded again and again"


async def put_event(
    client: Client, room: str, content: dict[str, Any], event_type: str = "m.room.message"
) -> None:
    await client.ok("PUT", f"/rooms/{quote(room)}/send/{event_type}/q{next(TXNS)}", json=content)


async def test_quarantine_reaches_copies_and_spares_protected_media(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    bob = await user(server, http, "bob")
    first, copy, other = (await upload(alice, SPAM), await upload(alice, SPAM), await upload(alice, b"fine"))
    here = quote(server.server_name)

    assert await admin.ok("POST", f"{A1}/media/quarantine/{here}/{first}") == {}
    assert [await download(bob, server, m) for m in (first, copy, other)] == [404, 404, 200]
    info = (await admin.ok("GET", f"{A1}/media/{here}/{copy}"))["media_info"]
    assert (info["quarantined"], info["safe_from_quarantine"]) == (True, False)
    # The same bytes uploaded again, directly and in two steps, are quarantined as stored.
    again = await upload(bob, SPAM)
    status, created = await bob.request("POST", "/_matrix/media/v1/create")
    assert status == 200, created
    reserved = created["content_uri"].rsplit("/", 1)[1]
    status, _ = await bob.request("PUT", f"/_matrix/media/v3/upload/{here}/{reserved}", data=SPAM)
    assert status == 200
    assert [await download(bob, server, m) for m in (again, reserved)] == [404, 404]

    # Releasing one releases its copies.
    assert await admin.ok("POST", f"{A1}/media/unquarantine/{here}/{copy}") == {}
    assert [await download(bob, server, m) for m in (first, copy, again, reserved)] == [200] * 4

    # A protected copy stays available, also when it is quarantined by its own ID.
    assert await admin.ok("POST", f"{A1}/media/protect/{copy}") == {}
    assert (await admin.ok("GET", f"{A1}/media/{here}/{copy}"))["media_info"]["safe_from_quarantine"] is True
    await admin.ok("POST", f"{A1}/media/quarantine/{here}/{first}")
    assert await admin.ok("POST", f"{A1}/media/quarantine/{here}/{copy}") == {}
    assert [await download(bob, server, m) for m in (first, copy, again)] == [404, 200, 404]
    assert await admin.ok("POST", f"{A1}/media/unprotect/{copy}") == {}
    await admin.ok("POST", f"{A1}/media/quarantine/{here}/{copy}")
    assert await download(bob, server, copy) == 404
    assert await download(bob, server, other) == 200

    for path in (f"{A1}/media/protect/nosuchmedia", f"{A1}/media/unprotect/nosuchmedia"):
        status, out = await admin.request("POST", path)
        assert (status, out["errcode"]) == (404, "M_NOT_FOUND"), path


async def test_a_rooms_media_listed_and_quarantined(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    here = server.server_name
    picture = await upload(alice, png_bytes(32, 32), "image/png")
    thumb = await upload(alice, png_bytes(8, 8), "image/png")
    sticker = await upload(alice, b"a sticker everyone uses")
    elsewhere = await upload(alice, b"in another room")
    room = await alice.create_room()
    other_room = await alice.create_room()
    for content in (
        {"msgtype": "m.text", "body": "hello"},
        {
            "msgtype": "m.image",
            "body": "p.png",
            "url": f"mxc://{here}/{picture}",
            "info": {"thumbnail_url": f"mxc://{here}/{thumb}"},
        },
        {"msgtype": "m.file", "body": "far", "url": "mxc://remote.example/farAwayMedia1"},
        {"msgtype": "m.file", "body": "bad", "url": "mxc://not a server/../x"},
        {"msgtype": "m.image", "body": "again", "url": f"mxc://{here}/{picture}"},
    ):
        await put_event(alice, room, content)
    await put_event(alice, room, {"body": "s", "url": f"mxc://{here}/{sticker}", "info": {}}, "m.sticker")
    await put_event(alice, other_room, {"msgtype": "m.file", "body": "x", "url": f"mxc://{here}/{elsewhere}"})

    listed = await admin.ok("GET", f"{A1}/room/{quote(room)}/media")
    assert listed == {
        "local": [f"mxc://{here}/{m}" for m in (picture, thumb, sticker)],
        "remote": ["mxc://remote.example/farAwayMedia1"],
    }

    await admin.ok("POST", f"{A1}/media/protect/{sticker}")
    out = await admin.ok("POST", f"{A1}/room/{quote(room)}/media/quarantine")
    assert out == {"num_quarantined": 3}  # the picture, its thumbnail, the remote item
    assert [await download(alice, server, m) for m in (picture, thumb, sticker, elsewhere)] == [
        404,
        404,
        200,
        200,
    ]
    remote = (await admin.ok("GET", f"{A1}/media/remote.example/farAwayMedia1"))["media_info"]
    assert remote["quarantined"] is True
    # Again, on the legacy path: nothing left to quarantine.
    assert await admin.ok("POST", f"{A1}/quarantine_media/{quote(room)}") == {"num_quarantined": 0}

    for method, path in (
        ("GET", f"{A1}/room/%21nope%3Ax/media"),
        ("POST", f"{A1}/room/%21nope%3Ax/media/quarantine"),
    ):
        status, body = await admin.request(method, path)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), path


async def test_a_users_media_quarantined(server: RunningServer, http: aiohttp.ClientSession) -> None:
    admin = await user(server, http, "root", admin=True)
    alice = await user(server, http, "alice")
    bob = await user(server, http, "bob")
    mine, kept, bobs = await upload(alice, b"one"), await upload(alice, b"two"), await upload(bob, b"three")
    await admin.ok("POST", f"{A1}/media/protect/{kept}")
    out = await admin.ok("POST", f"{A1}/user/{quote(alice.user_id)}/media/quarantine")
    assert out == {"num_quarantined": 1}
    assert [await download(bob, server, m) for m in (mine, kept, bobs)] == [404, 200, 200]

    status, body = await admin.request("POST", f"{A1}/user/{quote('@x:elsewhere.example')}/media/quarantine")
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = await admin.request(
        "POST", f"{A1}/user/{quote('@nobody:' + server.server_name)}/media/quarantine"
    )
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")


async def test_many_ids_at_once(server: RunningServer, http: aiohttp.ClientSession) -> None:
    """A spam room can name more media than one statement may bind (32,767 parameters on
    SQLite and PostgreSQL): they are quarantined in chunks."""
    alice = await user(server, http, "alice")
    real = await upload(alice, b"among many")
    store = services(server.runner.app, server.hs).media.store
    ids = [f"unknown{i:06d}" for i in range(40_000)] + [real]
    assert await store.set_quarantined(True, media_ids=ids) == 1
    assert await download(alice, server, real) == 404
