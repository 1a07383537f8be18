"""Server keys, notary, X-Matrix authentication and the version endpoint, between two Sotto servers."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from yarl import URL

from bridge.client import RemoteError
from bridge.keys import parse_key_response
from bridge.xmatrix import parse_authorization
from homeserver.events import encode_verify_key
from tests.federation.support import CertAuthority, fed_server, federation_of

PATH = "/_matrix/federation/v1/event/%24nope"


async def test_key_server_and_version_over_tls(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with fed_server(tmp_dirs[0], test_ca) as a, fed_server(tmp_dirs[1], test_ca) as b:
        fa, fb = federation_of(a), federation_of(b)
        keys = await fb.client.fetch_server_keys(a.server_name)
        parsed = parse_key_response(keys, a.server_name, a.hs.clock.time_ms())
        assert fa.local_keys.key_id in parsed
        assert keys["verify_keys"][fa.local_keys.key_id]["key"] == encode_verify_key(a.hs.signing_key)
        version = await fb.client.get(a.server_name, "/_matrix/federation/v1/version")
        assert version["server"]["name"] == "Sotto"
        # The key ring caches the key in the database.
        vk = await fb.keyring.get_verify_key(a.server_name, fa.local_keys.key_id, 0)
        assert encode_verify_key(vk) == encode_verify_key(a.hs.signing_key)
        # Notary: B serves A's keys, countersigned by B.
        async with aiohttp.ClientSession() as s:
            ssl_ctx = fa.client.ssl_context
            url = f"https://{b.server_name}/_matrix/key/v2/query"
            body: dict[str, Any] = {"server_keys": {a.server_name: {}}}
            async with s.post(url, json=body, ssl=ssl_ctx) as resp:
                assert resp.status == 200
                notary = await resp.json()
        [entry] = notary["server_keys"]
        assert set(entry["signatures"]) == {a.server_name, b.server_name}


async def test_x_matrix_is_verified(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with fed_server(tmp_dirs[0], test_ca) as a, fed_server(tmp_dirs[1], test_ca) as b:
        fb = federation_of(b)
        # A signed request passes authentication (and reaches the handler: unknown event -> 404).
        with pytest.raises(RemoteError) as err:
            await fb.client.get(a.server_name, "/_matrix/federation/v1/event/$nope")
        assert err.value.status == 404
        # No signature at all.
        with pytest.raises(RemoteError) as err:
            await fb.client.get(a.server_name, "/_matrix/federation/v1/event/$nope", signed=False)
        assert err.value.status == 401
        # A signature for another destination.
        fb.client.server_name = b.server_name
        from bridge.xmatrix import authorization_header

        header = authorization_header(
            "GET",
            "/_matrix/federation/v1/event/%24nope",
            b.server_name,
            "127.0.0.1:1",
            None,
            b.hs.signing_key,
        )
        assert parse_authorization(header).destination == "127.0.0.1:1"
        async with aiohttp.ClientSession() as s:
            url = URL(f"https://{a.server_name}/_matrix/federation/v1/event/%24nope", encoded=True)
            async with s.get(url, headers={"Authorization": header}, ssl=fb.client.ssl_context) as resp:
                assert resp.status == 401
            # A tampered signature.
            good = authorization_header(
                "GET",
                "/_matrix/federation/v1/event/%24nope",
                b.server_name,
                a.server_name,
                None,
                b.hs.signing_key,
            )
            bad = good.replace('sig="', 'sig="AAAA')
            async with s.get(url, headers={"Authorization": bad}, ssl=fb.client.ssl_context) as resp:
                assert resp.status == 401
            async with s.get(url, headers={"Authorization": good}, ssl=fb.client.ssl_context) as resp:
                assert resp.status == 404


def test_parse_authorization_variants() -> None:
    auth = parse_authorization(
        'X-Matrix origin=a.example:8448,key="ed25519:1", sig="abc\\"d",destination="b"'
    )
    assert auth.origin == "a.example:8448"
    assert auth.key_id == "ed25519:1"
    assert auth.signature == 'abc"d'
    assert auth.destination == "b"


def test_rotated_keys_are_published_as_old_verify_keys(tmp_path: Any) -> None:
    from bridge.keys import LocalKeys, load_old_keys, rotate_signing_key
    from homeserver.clock import Clock
    from homeserver.events import encode_signing_key, generate_signing_key, verify_key_id
    from homeserver.server import load_or_create_signing_key

    path = str(tmp_path / "signing.key")
    with open(path, "w") as f:
        f.write(encode_signing_key(generate_signing_key("old")) + "\n")
    old = load_or_create_signing_key(path)
    new = rotate_signing_key(path, now_ms=1234)
    assert verify_key_id(load_or_create_signing_key(path)) == verify_key_id(new) != verify_key_id(old)
    local = LocalKeys("hs.example", new, load_old_keys(path), Clock())
    response = local.key_response()
    assert response["old_verify_keys"] == {
        verify_key_id(old): {"key": encode_verify_key(old), "expired_ts": 1234}
    }
    keys = parse_key_response(response, "hs.example", 0)
    assert keys[verify_key_id(old)].valid_until_ts == 1234
    assert keys[verify_key_id(new)].valid_until_ts > 1234
