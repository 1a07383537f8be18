"""Shared helpers for the E2EE integration tests."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
from olm.pk import PkSigning

from tests.integration.e2ee.olm_client import OlmClient, canonical
from tests.support.server import RunningServer


async def olm_user(server: RunningServer, http: aiohttp.ClientSession, localpart: str) -> OlmClient:
    """Log in (registering first if needed) as a new device, with a fresh Olm account."""
    login = await server.login(localpart)
    return OlmClient.from_login(http, server.base_url, login)


class CrossSigning:
    """A user's master, self-signing and user-signing keys (libolm PkSigning)."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.master = PkSigning(PkSigning.generate_seed())
        self.self_signing = PkSigning(PkSigning.generate_seed())
        self.user_signing = PkSigning(PkSigning.generate_seed())

    @staticmethod
    def sign_with(signer: PkSigning, user_id: str, obj: dict[str, Any]) -> dict[str, Any]:
        signed = dict(obj)
        sigs = {u: dict(s) for u, s in (obj.get("signatures") or {}).items()}
        sigs.setdefault(user_id, {})[f"ed25519:{signer.public_key}"] = signer.sign(canonical(obj))
        signed["signatures"] = sigs
        return signed

    def key(self, usage: str, signer: PkSigning) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "usage": [usage],
            "keys": {f"ed25519:{signer.public_key}": signer.public_key},
        }

    def upload_body(self) -> dict[str, Any]:
        master = self.key("master", self.master)
        return {
            "master_key": master,
            "self_signing_key": self.sign_with(
                self.master, self.user_id, self.key("self_signing", self.self_signing)
            ),
            "user_signing_key": self.sign_with(
                self.master, self.user_id, self.key("user_signing", self.user_signing)
            ),
        }


def unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")
