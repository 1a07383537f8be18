"""TLS on the client listener when configured: `sotto serve` speaks HTTPS only."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.security.process import SottoProcess


async def test_client_listener_tls(tmp_path: Path) -> None:
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
