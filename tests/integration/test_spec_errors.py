"""Every failure is well-formed Matrix JSON with the spec's status and errcode."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from homeserver.config import ConfigError, config_from_dict
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

MakeUser = Callable[[str], Awaitable[RawClient]]


async def test_missing_and_bad_tokens(server: RunningServer, http: aiohttp.ClientSession) -> None:
    anon = RawClient(http, server.base_url)
    status, body = await anon.request("GET", "/sync")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    bad = RawClient(http, server.base_url, "syt_nonsense")
    status, body = await bad.request("GET", "/sync")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert body["soft_logout"] is False


async def test_query_string_tokens_are_refused(
    server: RunningServer, make_user: MakeUser, http: aiohttp.ClientSession
) -> None:
    alice = await make_user("alice")
    anon = RawClient(http, server.base_url)
    status, body = await anon.request("GET", "/joined_rooms", params={"access_token": alice.token or ""})
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"


async def test_unknown_endpoint_and_method(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    status, body = await alice.request("GET", "/no/such/endpoint")
    assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
    status, body = await alice.request("DELETE", "/createRoom")
    assert (status, body["errcode"]) == (405, "M_UNRECOGNIZED")


async def test_bad_json_and_oversized_bodies(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    status, body = await alice.request("POST", "/createRoom", data=b"{not json")
    assert (status, body["errcode"]) == (400, "M_NOT_JSON")
    status, body = await alice.request("POST", "/createRoom", json=[1, 2])
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    room = await alice.create_room()
    huge = {"msgtype": "m.text", "body": "x" * (2 * 1024 * 1024)}
    status, body = await alice.request("PUT", f"/rooms/{room}/send/m.room.message/big", json=huge)
    assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
    # Under the HTTP limit but over the 64 KiB PDU limit.
    pdu_big = {"msgtype": "m.text", "body": "x" * 70_000}
    status, body = await alice.request("PUT", f"/rooms/{room}/send/m.room.message/big2", json=pdu_big)
    assert (status, body["errcode"]) == (413, "M_TOO_LARGE")


async def test_forbidden_and_unknown_rooms(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    bob = await make_user("bob")
    room = await alice.create_room(preset="private_chat")
    status, body = await bob.join(room)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await bob.request("PUT", f"/rooms/{room}/send/m.room.message/1", json={"body": "x"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await bob.request("GET", f"/rooms/{room}/messages")
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await bob.join("!unknown:" + server.server_name)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await bob.join("#nope:" + server.server_name)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await alice.request("POST", "/createRoom", json={"room_version": "99"})
    assert (status, body["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION")
    status, body = await alice.request("GET", "/sync", params={"since": "garbage"})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


async def test_cors_preflight(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.options(server.base_url + "/_matrix/client/v3/sync") as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    async with http.get(server.base_url + "/_matrix/client/versions") as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        body = await resp.json()
        assert "v1.1" in body["versions"]


async def test_discovery_and_capabilities(server: RunningServer, make_user: MakeUser) -> None:
    alice = await make_user("alice")
    wk = await alice.ok("GET", "/.well-known/matrix/client")
    assert wk["m.homeserver"]["base_url"] == server.base_url
    caps = await alice.ok("GET", "/capabilities")
    rv = caps["capabilities"]["m.room_versions"]
    assert rv["default"] == "12" and {"10", "11", "12"} <= set(rv["available"])


async def test_metrics_endpoint(
    server: RunningServer, make_user: MakeUser, http: aiohttp.ClientSession
) -> None:
    alice = await make_user("alice")
    await alice.create_room()
    async with http.get(server.base_url + "/metrics") as resp:
        text = await resp.text()
    assert resp.status == 200
    assert "sotto_http_requests_total" in text and "sotto_stream_position" in text


async def test_metrics_refused_to_peers_outside_metrics_allow(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # The test client connects from loopback, which this server does not allow.
    async with run_server(str(tmp_path), metrics_allow=["10.0.0.0/8", "fd00::/8"]) as srv:
        async with http.get(srv.base_url + "/metrics") as resp:
            body = await resp.json()
            assert resp.status == 403
        assert body["errcode"] == "M_FORBIDDEN"
        assert "sotto_http_requests_total" not in str(body)


def test_metrics_allow_must_be_cidr_ranges() -> None:
    with pytest.raises(ConfigError, match="metrics_allow"):
        config_from_dict({"server_name": "example.org", "metrics_allow": ["not-a-network"]})
