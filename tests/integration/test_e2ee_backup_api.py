"""/room_keys over raw HTTP: versions, the three key levels, etag/count, replacement rules, errors."""

from __future__ import annotations

from typing import Any

from tests.integration.test_sync import MakeUser
from tests.support.http import RawClient
from tests.support.server import RunningServer

ALG = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!room:example.org"


def key(index: int = 0, forwarded: int = 0, verified: bool = False, data: str = "x") -> dict[str, Any]:
    return {
        "first_message_index": index,
        "forwarded_count": forwarded,
        "is_verified": verified,
        "session_data": {"ephemeral": "e", "ciphertext": data, "mac": "m"},
    }


async def test_versions_lifecycle(server: RunningServer, make_user: MakeUser) -> None:
    alice: RawClient = await make_user("alice")
    status, body = await alice.request("GET", "/room_keys/version")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    v1 = (
        await alice.ok(
            "POST", "/room_keys/version", json={"algorithm": ALG, "auth_data": {"public_key": "a"}}
        )
    )["version"]
    current = await alice.ok("GET", "/room_keys/version")
    assert current == {
        "algorithm": ALG,
        "auth_data": {"public_key": "a"},
        "count": 0,
        "etag": "0",
        "version": v1,
    }
    v2 = (
        await alice.ok(
            "POST", "/room_keys/version", json={"algorithm": ALG, "auth_data": {"public_key": "b"}}
        )
    )["version"]
    assert int(v2) > int(v1)
    assert (await alice.ok("GET", "/room_keys/version"))["version"] == v2
    assert (await alice.ok("GET", f"/room_keys/version/{v1}"))["auth_data"] == {"public_key": "a"}
    await alice.ok(
        "PUT", f"/room_keys/version/{v2}", json={"algorithm": ALG, "auth_data": {"public_key": "c"}}
    )
    assert (await alice.ok("GET", "/room_keys/version"))["auth_data"] == {"public_key": "c"}
    status, body = await alice.request(
        "PUT", f"/room_keys/version/{v2}", json={"algorithm": "other", "auth_data": {}}
    )
    assert status == 400
    status, body = await alice.request(
        "PUT", f"/room_keys/version/{v2}", json={"algorithm": ALG, "auth_data": {}, "version": v1}
    )
    assert status == 400
    await alice.ok("DELETE", f"/room_keys/version/{v2}")
    await alice.ok("DELETE", f"/room_keys/version/{v2}")  # deleting again succeeds
    assert (await alice.ok("GET", "/room_keys/version"))["version"] == v1
    status, body = await alice.request("GET", f"/room_keys/version/{v2}")
    assert status == 404
    status, body = await alice.request("DELETE", "/room_keys/version/999")
    assert status == 404
    status, body = await alice.request("GET", "/room_keys/version/notanumber")
    assert status == 404
    status, body = await alice.request("POST", "/room_keys/version", json={"algorithm": ALG})
    assert status == 400 and body["errcode"] == "M_MISSING_PARAM"
    # Another user sees nothing of Alice's backups.
    bob = await make_user("bob")
    status, body = await bob.request("GET", f"/room_keys/version/{v1}")
    assert status == 404


async def test_keys_three_levels_etag_and_count(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    status, body = await alice.request("PUT", "/room_keys/keys", params={"version": "1"}, json={"rooms": {}})
    assert status == 404
    version = (await alice.ok("POST", "/room_keys/version", json={"algorithm": ALG, "auth_data": {}}))[
        "version"
    ]
    q = {"version": version}
    r1 = await alice.ok(
        "PUT", "/room_keys/keys", params=q, json={"rooms": {ROOM: {"sessions": {"s1": key()}}}}
    )
    assert r1["count"] == 1
    r2 = await alice.ok("PUT", f"/room_keys/keys/{ROOM}", params=q, json={"sessions": {"s2": key()}})
    assert r2["count"] == 2 and r2["etag"] != r1["etag"]
    r3 = await alice.ok("PUT", f"/room_keys/keys/{ROOM}/s3", params=q, json=key())
    assert r3["count"] == 3
    info = await alice.ok("GET", "/room_keys/version")
    assert info["count"] == 3 and info["etag"] == r3["etag"]

    everything = await alice.ok("GET", "/room_keys/keys", params=q)
    assert set(everything["rooms"][ROOM]["sessions"]) == {"s1", "s2", "s3"}
    room = await alice.ok("GET", f"/room_keys/keys/{ROOM}", params=q)
    assert set(room["sessions"]) == {"s1", "s2", "s3"}
    assert await alice.ok("GET", f"/room_keys/keys/{ROOM}/s1", params=q) == key()
    assert await alice.ok("GET", "/room_keys/keys/!other:x", params=q) == {"sessions": {}}
    status, body = await alice.request("GET", f"/room_keys/keys/{ROOM}/nope", params=q)
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await alice.request("GET", "/room_keys/keys")
    assert status == 400 and body["errcode"] == "M_MISSING_PARAM"

    deleted = await alice.ok("DELETE", f"/room_keys/keys/{ROOM}/s3", params=q)
    assert deleted["count"] == 2
    deleted = await alice.ok("DELETE", f"/room_keys/keys/{ROOM}", params=q)
    assert deleted["count"] == 0
    assert await alice.ok("GET", "/room_keys/keys", params=q) == {"rooms": {}}


async def test_wrong_version_and_replacement_rules(make_user: MakeUser) -> None:
    alice = await make_user("alice")
    old = (await alice.ok("POST", "/room_keys/version", json={"algorithm": ALG, "auth_data": {}}))["version"]
    new = (await alice.ok("POST", "/room_keys/version", json={"algorithm": ALG, "auth_data": {}}))["version"]
    status, body = await alice.request(
        "PUT", f"/room_keys/keys/{ROOM}/s", params={"version": old}, json=key()
    )
    assert status == 403
    assert body["errcode"] == "M_WRONG_ROOM_KEYS_VERSION" and body["current_version"] == new

    path, q = f"/room_keys/keys/{ROOM}/s", {"version": new}

    async def stored() -> dict[str, Any]:
        result: dict[str, Any] = await alice.ok("GET", path, params=q)
        return result

    await alice.ok("PUT", path, params=q, json=key(index=5, forwarded=2, data="first"))
    # Higher first_message_index: kept the old one.
    await alice.ok("PUT", path, params=q, json=key(index=9, forwarded=0, data="worse"))
    assert (await stored())["session_data"]["ciphertext"] == "first"
    # Same index, fewer forwards: replaced.
    await alice.ok("PUT", path, params=q, json=key(index=5, forwarded=1, data="fewer-forwards"))
    assert (await stored())["session_data"]["ciphertext"] == "fewer-forwards"
    # Lower index: replaced.
    await alice.ok("PUT", path, params=q, json=key(index=1, forwarded=3, data="lower-index"))
    assert (await stored())["session_data"]["ciphertext"] == "lower-index"
    # Verified beats unverified, whatever the index.
    await alice.ok("PUT", path, params=q, json=key(index=50, forwarded=9, verified=True, data="verified"))
    assert (await stored())["session_data"]["ciphertext"] == "verified"
    await alice.ok("PUT", path, params=q, json=key(index=0, forwarded=0, verified=False, data="unverified"))
    assert (await stored())["session_data"]["ciphertext"] == "verified"

    status, body = await alice.request("PUT", path, params=q, json={"first_message_index": 0})
    assert status == 400
