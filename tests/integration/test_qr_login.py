"""Sign-in by QR code (MSC4108) with matrix-js-sdk on both sides (tests/js/qr_login.mjs): the
rendezvous sessions, the OAuth device authorisation grant approved on Sotto's page, and the
secrets handed over through the secure channel."""

from __future__ import annotations

from tests.support.js import run_node_script
from tests.support.server import run_server


async def test_a_new_device_signs_in_by_qr_code(tmp_path: object) -> None:
    async with run_server(str(tmp_path), oauth={"enabled": True}) as srv:
        login = await srv.login("qruser", "a long passphrase")
        env = {
            "HS_URL": srv.base_url,
            "USER_ID": login["user_id"],
            "ACCESS_TOKEN": login["access_token"],
            "DEVICE_ID": login["device_id"],
            "USERNAME": "qruser",
            "PASSWORD": "a long passphrase",
        }
        result = await run_node_script("qr_login.mjs", env, timeout=90)
        assert result["whoami"] == {
            "user_id": login["user_id"],
            "device_id": "QRNEWDEVICE",
            "is_guest": False,
        }
        assert result["sameCheckCode"] is True
        assert result["secretsMatch"] is True
        assert result["failures"] == []
        devices = {d.device_id for d in await srv.hs.accounts.list_devices(login["user_id"])}
        assert devices == {login["device_id"], "QRNEWDEVICE"}
