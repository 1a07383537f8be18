"""TLS on the client listener when configured: `sotto serve` speaks HTTPS only."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import trustme

from tests.security.process import SottoProcess

PASSWORD = "tls-Pa55word"


def _tls_server(tmp_path: Path) -> tuple[SottoProcess, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(cert_file), append=True)
    server = SottoProcess(
        tmp_path, listener={"tls_certificate_path": str(cert_file), "tls_private_key_path": str(key_file)}
    )
    server.base_url = server.base_url.replace("http://", "https://")
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server.ssl = client_ctx
    return server, client_ctx


async def test_client_listener_tls(tmp_path: Path) -> None:
    server, client_ctx = _tls_server(tmp_path)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.base_url + "/_matrix/client/versions", ssl=client_ctx) as resp:
                assert resp.status == 200
            # Plain HTTP is not served on the TLS port.
            with pytest.raises(aiohttp.ClientError):
                async with http.get(
                    server.base_url.replace("https://", "http://") + "/_matrix/client/versions"
                ) as r:
                    await r.read()
            # Nor does an untrusted certificate pass a verifying client.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(server.base_url + "/_matrix/client/versions") as r:
                    await r.read()
    finally:
        server.stop()
    assert f"https://127.0.0.1:{server.port}" in server.logs()


async def test_long_polls_over_tls_are_answered_and_keep_their_connection(tmp_path: Path) -> None:
    """A parked /sync is detached from aiohttp (homeserver.api.detached); over TLS its
    answer and the requests after it go through the TLS transport it was handed back."""
    server, client_ctx = _tls_server(tmp_path)
    assert server.cli("register-user", "alice", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    await server.start()
    base = server.base_url + "/_matrix/client/v3"
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as http,
            # One connection: every long-poll after the first reuses the one handed back.
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx, limit=1)) as poller,
        ):
            login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}}
            async with http.post(base + "/login", json={**login, "password": PASSWORD}) as r:
                token = (await r.json())["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            async with http.post(base + "/createRoom", json={}, headers=auth) as r:
                room = (await r.json())["room_id"]
            async with poller.get(base + "/sync", headers=auth) as r:
                since = (await r.json())["next_batch"]
            for i in range(3):
                params = {"since": since, "timeout": "30000"}
                poll = asyncio.create_task(poller.get(base + "/sync", params=params, headers=auth))
                await asyncio.sleep(0.3)
                assert not poll.done()
                async with http.get(server.base_url + "/metrics") as r:
                    assert "\nsotto_sync_detached 1.0\n" in await r.text()
                url = f"{base}/rooms/{quote(room)}/send/m.room.message/t{i}"
                async with http.put(url, json={"msgtype": "m.text", "body": f"m{i}"}, headers=auth) as r:
                    assert r.status == 200
                async with await asyncio.wait_for(poll, 30) as r:
                    assert r.status == 200
                    body = await r.json()
                events = body["rooms"]["join"][room]["timeline"]["events"]
                assert [e["content"]["body"] for e in events] == [f"m{i}"]
                since = body["next_batch"]
    finally:
        server.stop()
