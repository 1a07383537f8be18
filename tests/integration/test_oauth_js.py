"""matrix-js-sdk's own OAuth 2.0 client (what Element Web builds on) signs in through Sotto's
OAuth 2.0 API: discovery and metadata validation, registration, the authorisation code
grant, refresh, revocation and the device authorisation grant (tests/js/oauth_client.mjs)."""

from __future__ import annotations

from tests.support.js import run_node_script
from tests.support.server import run_server


async def test_matrix_js_sdk_signs_in_through_oauth(tmp_path: object) -> None:
    async with run_server(str(tmp_path), oauth={"enabled": True}) as srv:
        user_id = await srv.register("jsoauth", password="a long passphrase")
        env = {"HS_URL": srv.base_url, "USERNAME": "jsoauth", "PASSWORD": "a long passphrase"}
        result = await run_node_script("oauth_client.mjs", env, timeout=90)
        device_id = result["deviceId"]
        assert result["whoami"] == {"user_id": user_id, "device_id": device_id, "is_guest": False}
        assert result["scope"] == f"urn:matrix:client:api:* urn:matrix:client:device:{device_id}"
        assert result["renewed"] == device_id
        assert result["revoked"] == "M_UNKNOWN_TOKEN"
        assert result["linked"] is True
        # The revoked session's device is gone; the device grant's one remains.
        remaining = [d.device_id for d in await srv.hs.accounts.list_devices(user_id)]
        assert device_id not in remaining and len(remaining) == 1
