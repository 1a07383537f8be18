"""Unit tests of the bridge's pure pieces: discovery, address filtering, multipart, X-Matrix."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.discovery import AddressFilter, ServerResolver, Target, parse_max_age, split_server_name
from bridge.media import parse_multipart
from bridge.xmatrix import authorization_header, parse_authorization, request_json
from homeserver import jsonutil
from homeserver.clock import Clock
from homeserver.events import generate_signing_key, verify_json_signature
from homeserver.events.signing import decode_verify_key, encode_verify_key, verify_key_id


class FakeClock(Clock):
    def __init__(self) -> None:
        self.now = 1_000_000

    def time_ms(self) -> int:
        return self.now


async def test_server_name_resolution_and_well_known_cache() -> None:
    calls: list[str] = []
    answers: dict[str, tuple[Any, int | None]] = {
        "example.org": ({"m.server": "matrix.example.org:443"}, 60_000),
        "delegated.net": ({"m.server": "hs.delegated.net"}, None),
    }

    async def fetch(host: str) -> tuple[Any, int | None]:
        calls.append(host)
        if host not in answers:
            raise OSError("no well-known")
        return answers[host]

    clock = FakeClock()
    resolver = ServerResolver(clock, fetch)
    assert await resolver.resolve("127.0.0.1:8449") == Target("127.0.0.1", 8449, "127.0.0.1:8449")
    assert await resolver.resolve("[::1]") == Target("::1", 8448, "[::1]")
    assert await resolver.resolve("host.org:1234") == Target("host.org", 1234, "host.org:1234")
    assert calls == []
    delegated = Target("matrix.example.org", 443, "matrix.example.org:443")
    assert await resolver.resolve("example.org") == delegated
    assert await resolver.resolve("delegated.net") == Target("hs.delegated.net", 8448, "hs.delegated.net")
    assert await resolver.resolve("plain.org") == Target("plain.org", 8448, "plain.org")
    # Cached: no second lookup until the TTL passes.
    await resolver.resolve("example.org")
    assert calls.count("example.org") == 1
    clock.now += 61_000
    await resolver.resolve("example.org")
    assert calls.count("example.org") == 2
    assert split_server_name("[2001:db8::1]:8448") == ("[2001:db8::1]", 8448)
    assert parse_max_age("public, max-age=3600") == 3_600_000


def test_address_filter() -> None:
    strict = AddressFilter([])
    assert not strict.allowed("127.0.0.1")
    assert not strict.allowed("10.1.2.3")
    assert not strict.allowed("::1")
    assert strict.allowed("8.8.8.8")
    loopback = AddressFilter(["127.0.0.0/8"])
    assert loopback.allowed("127.0.0.1")
    assert not loopback.allowed("192.168.1.1")


def test_multipart_parsing() -> None:
    body = (
        b"--abc\r\nContent-Type: application/json\r\n\r\n{}\r\n"
        b'--abc\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename="a.png"\r\n\r\n'
        b"\x00\x01\r\n\x02\r\n--abc--\r\n"
    )
    parts = parse_multipart('multipart/mixed; boundary="abc"', body)
    assert parts[0] == ({"content-type": "application/json"}, b"{}")
    assert parts[1][0]["content-type"] == "image/png"
    assert parts[1][1] == b"\x00\x01\r\n\x02"


def test_x_matrix_header_round_trip() -> None:
    key = generate_signing_key("k1")
    header = authorization_header("PUT", "/_matrix/federation/v1/send/1", "a.org", "b.org", {"x": 1}, key)
    auth = parse_authorization(header)
    assert (auth.origin, auth.destination, auth.key_id) == ("a.org", "b.org", "ed25519:k1")
    signed = request_json("PUT", "/_matrix/federation/v1/send/1", "a.org", "b.org", {"x": 1})
    signed["signatures"] = {"a.org": {auth.key_id: auth.signature}}
    verify_json_signature(signed, "a.org", decode_verify_key(verify_key_id(key), encode_verify_key(key)))


def test_x_matrix_request_with_floats_verifies() -> None:
    from bridge.xmatrix import verify_request_signature
    from homeserver.events import SignatureError, sign_json_object

    key = generate_signing_key("k1")
    vk = decode_verify_key(verify_key_id(key), encode_verify_key(key))
    path = "/_matrix/federation/v1/send/1"
    content = {"pdus": [{"content": {"n": 1.5, "m": 2.0}}], "edus": [{"content": {"ts": 1e10}}]}
    header = authorization_header("PUT", path, "a.org", "b.org", content, key)
    auth = parse_authorization(header)
    # The receiver re-parses the JSON body; floats stay floats.
    received = jsonutil.loads(jsonutil.dumpb(content))
    signed = request_json("PUT", path, "a.org", "b.org", received)
    signed["signatures"] = {"a.org": {auth.key_id: auth.signature}}
    verify_request_signature(signed, "a.org", vk)
    # A signature over the integral-float-normalised form (older Sotto) is accepted too.
    old_content = {"edus": [{"content": {"ts": 1e10}}]}
    old = sign_json_object(request_json("PUT", path, "a.org", "b.org", old_content), "a.org", key)
    verify_request_signature(
        dict(request_json("PUT", path, "a.org", "b.org", old_content), signatures=old["signatures"]),
        "a.org",
        vk,
    )
    # Tampering still fails.
    signed["content"] = {"pdus": [], "edus": []}
    with pytest.raises(SignatureError):
        verify_request_signature(signed, "a.org", vk)
