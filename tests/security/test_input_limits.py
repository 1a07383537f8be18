"""Input limits: identifier grammar on path parameters and membership targets, size caps on
PDUs, state keys, event types, filters, bodies and uploads, JSON that cannot be canonical,
malformed JSON and decompression bombs — each rejected with the spec's errcode, never a 500."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from PIL import Image

from tests.security.support import raw
from tests.support.server import RunningServer, run_server


@pytest.fixture
async def ctx(tmp_path: object, http: aiohttp.ClientSession) -> AsyncIterator[dict[str, Any]]:
    async with run_server(str(tmp_path), limits={"max_upload_bytes": 200_000}) as srv:
        user_id = await srv.register("alice")
        token, _ = await srv.hs.auth.create_session(user_id, None, None)
        status, body, _ = await raw(
            http, "POST", f"{srv.base_url}/_matrix/client/v3/createRoom", token=token, json={}
        )
        assert status == 200
        yield {"srv": srv, "token": token, "user_id": user_id, "room": body["room_id"]}


async def call(
    http: aiohttp.ClientSession, ctx: dict[str, Any], method: str, path: str, **kw: Any
) -> tuple[int, Any]:
    srv: RunningServer = ctx["srv"]
    if not path.startswith("/_matrix"):
        path = "/_matrix/client/v3" + path
    status, body, _ = await raw(http, method, srv.base_url + path, token=ctx["token"], **kw)
    return status, body


BAD_PATHS = [
    ("GET", "/rooms/notaroom/messages"),
    ("GET", "/rooms/{}/state".format(quote("!nodomain"))),
    ("GET", "/rooms/{}/state".format(quote("!a:bad host"))),
    ("GET", "/rooms/{}/state".format(quote("!a\x00:example.org"))),
    ("GET", "/rooms/{}/state".format(quote("!" + "a" * 300 + ":example.org"))),
    ("GET", "/profile/notauser"),
    ("GET", "/profile/{}".format(quote("@alice"))),
    ("GET", "/directory/room/{}".format(quote("#noserver"))),
    ("GET", "/directory/room/{}".format(quote("!room:example.org"))),
    ("POST", "/join/garbage"),
    ("GET", "/rooms/{room}/event/noevent"),
    ("GET", "/rooms/{room}/context/notanevent"),
    ("PUT", "/rooms/{room}/redact/notanevent/txn"),
    ("PUT", "/rooms/{room}/typing/notauser"),
    ("PUT", "/rooms/{room}/send/" + "t" * 256 + "/txn"),
    ("PUT", "/rooms/{room}/state/m.room.name/" + "k" * 256),
    ("PUT", "/rooms/{room}/send/m.room.message/" + "x" * 256),
]


@pytest.mark.parametrize(("method", "path"), BAD_PATHS)
async def test_bad_path_parameters(
    ctx: dict[str, Any], http: aiohttp.ClientSession, method: str, path: str
) -> None:
    body: dict[str, Any] | None = {} if method in ("PUT", "POST") else None
    status, out = await call(http, ctx, method, path.replace("{room}", quote(ctx["room"])), json=body)
    assert (status, out["errcode"]) == (400, "M_INVALID_PARAM"), out


@pytest.mark.parametrize("action", ["invite", "kick", "ban", "unban"])
@pytest.mark.parametrize("target", ["garbage", "@x:" + "a" * 300, "@nodomain"])
async def test_membership_target_must_be_a_user_id(
    ctx: dict[str, Any], http: aiohttp.ClientSession, action: str, target: str
) -> None:
    status, out = await call(
        http, ctx, "POST", f"/rooms/{quote(ctx['room'])}/{action}", json={"user_id": target}
    )
    assert (status, out["errcode"]) == (400, "M_INVALID_PARAM"), out


async def test_create_room_invitees_must_be_user_ids(
    ctx: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    status, out = await call(http, ctx, "POST", "/createRoom", json={"invite": ["garbage"]})
    assert (status, out["errcode"]) == (400, "M_INVALID_PARAM")


async def test_pdu_size_limit(ctx: dict[str, Any], http: aiohttp.ClientSession) -> None:
    path = f"/rooms/{quote(ctx['room'])}/send/m.room.message/big"
    status, out = await call(http, ctx, "PUT", path, json={"msgtype": "m.text", "body": "x" * 70_000})
    assert (status, out["errcode"]) == (413, "M_TOO_LARGE")
    # Just under the limit is fine.
    status, out = await call(http, ctx, "PUT", path + "2", json={"msgtype": "m.text", "body": "x" * 60_000})
    assert status == 200, out


@pytest.mark.parametrize("value", [1.5, 1e10, 2**53, -(2**53), 2**63])
async def test_non_canonical_json_values(
    ctx: dict[str, Any], http: aiohttp.ClientSession, value: Any
) -> None:
    # Room version 12 (the default) requires strict canonical JSON: no floats, safe integers only.
    path = f"/rooms/{quote(ctx['room'])}/send/m.room.message/{abs(hash(str(value)))}"
    status, out = await call(http, ctx, "PUT", path, json={"msgtype": "m.text", "body": "x", "n": value})
    assert (status, out["errcode"]) == (400, "M_BAD_JSON"), out
    status, out = await call(http, ctx, "POST", "/createRoom", json={"creation_content": {"n": value}})
    assert (status, out["errcode"]) == (400, "M_BAD_JSON"), out


async def test_safe_integers_are_accepted(ctx: dict[str, Any], http: aiohttp.ClientSession) -> None:
    path = f"/rooms/{quote(ctx['room'])}/send/m.room.message/ints"
    body = {"msgtype": "m.text", "body": "x", "max": 2**53 - 1, "min": -(2**53) + 1}
    status, out = await call(http, ctx, "PUT", path, json=body)
    assert status == 200, out


async def test_filter_size_limit(ctx: dict[str, Any], http: aiohttp.ClientSession) -> None:
    path = f"/user/{quote(ctx['user_id'])}/filter"
    big = {"room": {"rooms": ["!a:example.org"] * 5000}}
    status, out = await call(http, ctx, "POST", path, json=big)
    assert (status, out["errcode"]) == (413, "M_TOO_LARGE")
    status, out = await call(http, ctx, "POST", path, json={"room": {"rooms": ["!a:example.org"]}})
    assert status == 200, out


async def test_body_size_limit(ctx: dict[str, Any], http: aiohttp.ClientSession) -> None:
    data = b'{"a":"' + b"x" * (2 * 1024 * 1024) + b'"}'
    status, out = await call(
        http, ctx, "POST", "/createRoom", data=data, headers={"Content-Type": "application/json"}
    )
    assert (status, out["errcode"]) == (413, "M_TOO_LARGE")


@pytest.mark.parametrize(
    ("data", "errcode"),
    [
        (b"not json", "M_NOT_JSON"),
        (b"[1, 2]", "M_BAD_JSON"),
        (b"[" * 5000, "M_NOT_JSON"),
        (b"\xff\xfe", "M_NOT_JSON"),
    ],
)
async def test_malformed_json(
    ctx: dict[str, Any], http: aiohttp.ClientSession, data: bytes, errcode: str
) -> None:
    status, out = await call(
        http, ctx, "POST", "/createRoom", data=data, headers={"Content-Type": "application/json"}
    )
    assert (status, out["errcode"]) == (400, errcode)


async def test_upload_size_limit(ctx: dict[str, Any], http: aiohttp.ClientSession) -> None:
    status, out = await call(
        http,
        ctx,
        "POST",
        "/_matrix/media/v3/upload",
        data=b"x" * 300_000,
        headers={"Content-Type": "text/plain"},
    )
    assert (status, out["errcode"]) == (413, "M_TOO_LARGE")


async def test_thumbnail_decompression_bomb(ctx: dict[str, Any], http: aiohttp.ClientSession) -> None:
    # 400 megapixels that compress to ~50 kB: decoding it would need ~400 MB.
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, "PNG")
    status, out = await call(
        http,
        ctx,
        "POST",
        "/_matrix/media/v3/upload",
        data=buf.getvalue(),
        headers={"Content-Type": "image/png"},
    )
    assert status == 200, out
    mxc = out["content_uri"].removeprefix("mxc://")
    status, out = await call(
        http, ctx, "GET", f"/_matrix/client/v1/media/thumbnail/{mxc}", params={"width": "32", "height": "32"}
    )
    assert 400 <= status < 500 and out["errcode"] in ("M_TOO_LARGE", "M_UNKNOWN", "M_NOT_FOUND"), out
    # The server is still answering.
    status, _ = await call(http, ctx, "GET", "/joined_rooms")
    assert status == 200


async def test_initial_state_key_size(ctx: dict[str, Any], http: aiohttp.ClientSession) -> None:
    state = [{"type": "m.x", "state_key": "k" * 300, "content": {}}]
    status, out = await call(http, ctx, "POST", "/createRoom", json={"initial_state": state})
    assert status == 400, out
