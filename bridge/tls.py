"""TLS contexts for the federation listener (server side) and outbound requests (client side)."""

from __future__ import annotations

import ssl


def server_context(certificate_path: str, private_key_path: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certificate_path, private_key_path)
    return ctx


def client_context(verify: bool, custom_ca_file: str | None) -> ssl.SSLContext:
    """Certificates are verified (system CAs plus `custom_ca_file`) unless `verify` is off."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if custom_ca_file:
        ctx.load_verify_locations(cafile=custom_ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
