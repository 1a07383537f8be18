"""Rate limits: messages, joins, invites, media uploads, key claims, to-device messages,
typing notifications and receipts answer 429
M_LIMIT_EXCEEDED with retry_after_ms and Retry-After once a user's bucket is empty;
buckets refill with time; admins are exempt; limits are on by default."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.api.guard import RATE_LIMITS_KEY
from homeserver.config import Config
from homeserver.ratelimit import RateLimiter, RateLimits
from tests.security.support import FakeClock, raw
from tests.support.http import RawClient
from tests.support.server import RunningServer, run_server

LIMITS = {
    "enabled": True,
    "messages_per_second": 0.5,
    "messages_burst": 3,
    "joins_per_second": 0.5,
    "joins_burst": 2,
    "invites_per_second": 0.5,
    "invites_burst": 2,
    "invites_received_per_second": 0.5,
    "invites_received_burst": 1,
    "media_uploads_per_second": 0.5,
    "media_uploads_burst": 2,
    "key_claims_per_second": 0.5,
    "key_claims_burst": 2,
    "to_device_per_second": 0.5,
    "to_device_burst": 2,
    "typing_per_second": 0.5,
    "typing_burst": 2,
    "receipts_per_second": 0.5,
    "receipts_burst": 2,
    # /login is limited by the accounts area; keep it out of the way here.
    "login_per_second": 100.0,
    "login_burst": 100,
}


@pytest.fixture
async def limited(tmp_path: object) -> AsyncIterator[tuple[RunningServer, FakeClock]]:
    async with run_server(str(tmp_path), rate_limits=LIMITS) as srv:
        clock = FakeClock()
        limits = srv.runner.app[RATE_LIMITS_KEY]
        for limiter in vars_of(limits):
            limiter.clock = clock
        yield srv, clock


def vars_of(limits: RateLimits) -> list[RateLimiter]:
    return [getattr(limits, name) for name in RateLimits.__dataclass_fields__]


async def user(srv: RunningServer, http: aiohttp.ClientSession, name: str, admin: bool = False) -> RawClient:
    user_id = await srv.register(name, admin=admin)
    token, _ = await srv.hs.auth.create_session(user_id, None, None)
    return RawClient(http, srv.base_url, token, user_id)


def assert_limited(status: int, body: dict[str, object], headers: dict[str, str]) -> None:
    assert status == 429, body
    assert body["errcode"] == "M_LIMIT_EXCEEDED"
    retry = body["retry_after_ms"]
    assert isinstance(retry, int) and retry > 0
    assert int(headers["Retry-After"]) == max(1, -(-retry // 1000))


def test_limits_are_on_by_default() -> None:
    cfg = Config().rate_limits
    assert cfg.enabled
    names = ("messages", "joins", "invites", "media_uploads", "key_claims", "federation")
    for name in (*names, "to_device", "typing", "receipts"):
        assert getattr(cfg, f"{name}_per_second") > 0
        assert getattr(cfg, f"{name}_burst") >= 1


async def test_messages_limited_then_refill(
    limited: tuple[RunningServer, FakeClock], http: aiohttp.ClientSession
) -> None:
    srv, clock = limited
    alice = await user(srv, http, "alice")
    room = await alice.create_room()
    url = f"{srv.base_url}/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/"
    statuses = []
    for i in range(4):
        status, body, headers = await raw(
            http, "PUT", url + f"t{i}", token=alice.token, json={"msgtype": "m.text", "body": "hi"}
        )
        statuses.append(status)
    assert statuses[:3] == [200, 200, 200]
    assert_limited(status, body, headers)
    # Nothing was stored for the refused request; after waiting it goes through.
    clock.now += body["retry_after_ms"] / 1000
    status, _, _ = await raw(
        http, "PUT", url + "t3", token=alice.token, json={"msgtype": "m.text", "body": "x"}
    )
    assert status == 200
    # State events and redactions share the message bucket.
    status, body, headers = await raw(
        http,
        "PUT",
        f"{srv.base_url}/_matrix/client/v3/rooms/{quote(room)}/state/m.room.topic",
        token=alice.token,
        json={"topic": "t"},
    )
    assert_limited(status, body, headers)


async def test_admins_are_exempt(
    limited: tuple[RunningServer, FakeClock], http: aiohttp.ClientSession
) -> None:
    srv, _ = limited
    admin = await user(srv, http, "root", admin=True)
    room = await admin.create_room()
    for i in range(8):
        await admin.send(room, "hello", f"t{i}")


async def test_joins_limited(limited: tuple[RunningServer, FakeClock], http: aiohttp.ClientSession) -> None:
    srv, _ = limited
    owner = await user(srv, http, "owner", admin=True)
    bob = await user(srv, http, "bob")
    rooms = [await owner.create_room(preset="public_chat") for _ in range(3)]
    assert (await bob.join(rooms[0]))[0] == 200
    assert (await bob.join(rooms[1]))[0] == 200
    status, body, headers = await raw(
        http,
        "POST",
        f"{srv.base_url}/_matrix/client/v3/rooms/{quote(rooms[2])}/join",
        token=bob.token,
        json={},
    )
    assert_limited(status, body, headers)
    # The refused join did not happen.
    members = await owner.ok("GET", f"/rooms/{quote(rooms[2])}/joined_members")
    assert bob.user_id not in members["joined"]


async def test_invites_limited_per_sender_and_per_target(
    limited: tuple[RunningServer, FakeClock], http: aiohttp.ClientSession
) -> None:
    srv, clock = limited
    alice = await user(srv, http, "alice", admin=False)
    carol = await user(srv, http, "carol")
    targets = [await user(srv, http, f"t{i}") for i in range(3)]
    room = await alice.create_room()
    clock.now += 100  # createRoom cost a join
    invite = f"{srv.base_url}/_matrix/client/v3/rooms/{quote(room)}/invite"
    assert (await raw(http, "POST", invite, token=alice.token, json={"user_id": targets[0].user_id}))[
        0
    ] == 200
    assert (await raw(http, "POST", invite, token=alice.token, json={"user_id": targets[1].user_id}))[
        0
    ] == 200
    assert_limited(*await raw(http, "POST", invite, token=alice.token, json={"user_id": targets[2].user_id}))
    # A second inviter still cannot invite t0 again soon: its received-invite bucket is empty.
    room2 = await carol.create_room()
    assert_limited(
        *await raw(
            http,
            "POST",
            f"{srv.base_url}/_matrix/client/v3/rooms/{quote(room2)}/invite",
            token=carol.token,
            json={"user_id": targets[0].user_id},
        )
    )


async def test_media_uploads_limited(
    limited: tuple[RunningServer, FakeClock], http: aiohttp.ClientSession
) -> None:
    srv, _ = limited
    alice = await user(srv, http, "alice")
    url = f"{srv.base_url}/_matrix/media/v3/upload"
    headers = {"Content-Type": "text/plain"}
    for _ in range(2):
        status, body, _h = await raw(http, "POST", url, token=alice.token, data=b"x", headers=headers)
        assert status == 200, body
    assert_limited(*await raw(http, "POST", url, token=alice.token, data=b"x", headers=headers))


async def test_key_claims_limited(
    limited: tuple[RunningServer, FakeClock], http: aiohttp.ClientSession
) -> None:
    srv, _ = limited
    alice = await user(srv, http, "alice")
    url = f"{srv.base_url}/_matrix/client/v3/keys/claim"
    body = {"one_time_keys": {alice.user_id: {"DEVICE": "signed_curve25519"}}}
    for _ in range(2):
        assert (await raw(http, "POST", url, token=alice.token, json=body))[0] == 200
    assert_limited(*await raw(http, "POST", url, token=alice.token, json=body))


async def test_to_device_limited(
    limited: tuple[RunningServer, FakeClock], http: aiohttp.ClientSession
) -> None:
    srv, clock = limited
    alice = await user(srv, http, "alice")
    url = f"{srv.base_url}/_matrix/client/v3/sendToDevice/m.test/"
    body = {"messages": {alice.user_id: {"*": {"n": 1}}}}
    for i in range(2):
        assert (await raw(http, "PUT", url + f"t{i}", token=alice.token, json=body))[0] == 200
    status, refused, headers = await raw(http, "PUT", url + "t2", token=alice.token, json=body)
    assert_limited(status, refused, headers)
    clock.now += refused["retry_after_ms"] / 1000
    assert (await raw(http, "PUT", url + "t2", token=alice.token, json=body))[0] == 200


async def test_typing_and_receipts_limited(
    limited: tuple[RunningServer, FakeClock], http: aiohttp.ClientSession
) -> None:
    srv, _ = limited
    alice = await user(srv, http, "alice")
    room = await alice.create_room()
    event_id = await alice.send(room, "read me", "t0")
    room_url = f"{srv.base_url}/_matrix/client/v3/rooms/{quote(room)}"
    typing = f"{room_url}/typing/{quote(alice.user_id)}"
    for _ in range(2):
        assert (await raw(http, "PUT", typing, token=alice.token, json={"typing": False}))[0] == 200
    assert_limited(*await raw(http, "PUT", typing, token=alice.token, json={"typing": False}))
    # Receipts and read markers share one bucket, separate from typing.
    receipt = f"{room_url}/receipt/m.read/{quote(event_id)}"
    assert (await raw(http, "POST", receipt, token=alice.token, json={}))[0] == 200
    markers = f"{room_url}/read_markers"
    assert (await raw(http, "POST", markers, token=alice.token, json={"m.fully_read": event_id}))[0] == 200
    assert_limited(*await raw(http, "POST", receipt, token=alice.token, json={}))


async def test_limits_off_in_tests_by_default(server: RunningServer, http: aiohttp.ClientSession) -> None:
    user_id = await server.register("alice")
    token, _ = await server.hs.auth.create_session(user_id, None, None)
    alice = RawClient(http, server.base_url, token, user_id)
    room = await alice.create_room()
    for i in range(60):
        await alice.send(room, "hi", f"t{i}")


def test_limiter_unit() -> None:
    clock = FakeClock()
    lim = RateLimiter(clock, rate=1.0, burst=2, max_keys=2)
    assert lim.retry_after_ms("a") is None
    lim.check("a")
    lim.check("a")
    assert lim.retry_after_ms("a") == 1001
    # charge() may leave debt: the next request waits for it to be repaid.
    lim.charge("a", 2)
    assert lim.retry_after_ms("a") == 3001
    clock.now += 3.0
    assert lim.retry_after_ms("a") is None
    lim.check("b")
    lim.check("c")
    assert len(lim._buckets) == 2


async def test_login_limit_gets_retry_after_header(tmp_path: object, http: aiohttp.ClientSession) -> None:
    # The accounts area's /login limiter raises inside the handler; the guard adds the header.
    async with run_server(str(tmp_path), rate_limits={"enabled": True, "login_burst": 1}) as srv:
        body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "x"}, "password": "p"}
        url = f"{srv.base_url}/_matrix/client/v3/login"
        await raw(http, "POST", url, json=body)
        assert_limited(*await raw(http, "POST", url, json=body))
