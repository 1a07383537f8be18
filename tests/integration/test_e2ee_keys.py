"""/keys/* over raw HTTP with real libolm keys: upload, query, claim, fallback, changes,
cross-signing, signatures, device deletion and the /sync key fields."""

from __future__ import annotations

from typing import Any

import aiohttp
from olm.utility import ed25519_verify

from tests.integration.e2ee.fixtures import CrossSigning, olm_user
from tests.integration.e2ee.olm_client import OlmClient, canonical
from tests.support.server import RunningServer


async def test_upload_query_and_counts(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await olm_user(server, http, "alice")
    result = await alice.upload_keys(one_time=5)
    assert result["one_time_key_counts"]["signed_curve25519"] == 5

    bob = await olm_user(server, http, "bob")
    query = await bob.raw.ok("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    dk = query["device_keys"][alice.user_id][alice.device_id]
    assert dk["keys"][f"ed25519:{alice.device_id}"] == alice.ed25519
    assert dk["signatures"][alice.user_id][f"ed25519:{alice.device_id}"]
    assert "device_display_name" in dk["unsigned"] or dk["unsigned"] == {}
    # Querying a specific unknown device returns nothing for it, no error.
    query = await bob.raw.ok("POST", "/keys/query", json={"device_keys": {alice.user_id: ["NOPE"]}})
    assert query["device_keys"][alice.user_id] == {}
    assert query["failures"] == {}

    sync = await alice.sync()
    assert sync["device_one_time_keys_count"]["signed_curve25519"] == 5
    assert sync["device_unused_fallback_key_types"] == ["signed_curve25519"]


async def test_upload_rejects_foreign_or_unsigned_device_keys(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await olm_user(server, http, "alice")
    dk = alice.device_keys()
    for bad, errcode in (
        ({**dk, "device_id": "OTHER"}, "M_INVALID_PARAM"),
        ({**dk, "user_id": "@mallory:example.org"}, "M_INVALID_PARAM"),
        ({**dk, "algorithms": ["tampered"]}, "M_INVALID_SIGNATURE"),
        ({k: v for k, v in dk.items() if k != "keys"}, "M_MISSING_PARAM"),
        ("not an object", "M_BAD_JSON"),
    ):
        status, body = await alice.raw.request("POST", "/keys/upload", json={"device_keys": bad})
        assert status == 400 and body["errcode"] == errcode, (bad, body)
    status, body = await alice.raw.request(
        "POST",
        "/keys/upload",
        json={"one_time_keys": {f"signed_curve25519:{i}": {"key": "x"} for i in range(201)}},
    )
    assert status == 400 and body["errcode"] == "M_TOO_LARGE"
    status, body = await alice.raw.request("POST", "/keys/upload", json={"one_time_keys": {"nocolon": "x"}})
    assert status == 400 and body["errcode"] == "M_BAD_JSON"
    # Re-uploading the same one-time key is fine; changing it is not.
    await alice.raw.ok("POST", "/keys/upload", json={"one_time_keys": {"signed_curve25519:A": {"key": "k1"}}})
    await alice.raw.ok("POST", "/keys/upload", json={"one_time_keys": {"signed_curve25519:A": {"key": "k1"}}})
    status, body = await alice.raw.request(
        "POST", "/keys/upload", json={"one_time_keys": {"signed_curve25519:A": {"key": "k2"}}}
    )
    assert status == 400


async def test_claim_one_time_then_fallback(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await olm_user(server, http, "alice")
    await alice.upload_keys(one_time=2, fallback=True)
    bob = await olm_user(server, http, "bob")
    wanted = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    seen = []
    for _ in range(2):
        claim = await bob.raw.ok("POST", "/keys/claim", json=wanted)
        ((key_id, key),) = claim["one_time_keys"][alice.user_id][alice.device_id].items()
        assert "fallback" not in key
        seen.append(key_id)
    assert len(set(seen)) == 2
    # Out of one-time keys: the fallback key, again and again, marked used.
    for _ in range(2):
        claim = await bob.raw.ok("POST", "/keys/claim", json=wanted)
        ((key_id, key),) = claim["one_time_keys"][alice.user_id][alice.device_id].items()
        assert key["fallback"] is True
    sync = await alice.sync()
    assert sync["device_one_time_keys_count"].get("signed_curve25519", 0) == 0
    assert sync["device_unused_fallback_key_types"] == []
    # Unknown devices and remote servers.
    claim = await bob.raw.ok(
        "POST",
        "/keys/claim",
        json={
            "one_time_keys": {
                alice.user_id: {"NOPE": "signed_curve25519"},
                "@carol:remote.example": {"D": "signed_curve25519"},
            }
        },
    )
    assert claim["one_time_keys"] == {}
    assert "remote.example" in claim["failures"]


async def test_to_device_delivery_confirmation_and_idempotency(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await olm_user(server, http, "alice")
    bob = await olm_user(server, http, "bob")
    bob2 = OlmClient.from_login(http, server.base_url, await server.login("bob"))
    await bob.sync()
    await bob2.sync()
    messages = {bob.user_id: {"*": {"hello": "all"}}}
    for _ in range(2):  # the retry with the same txn ID is not delivered twice
        await alice.raw.ok("PUT", "/sendToDevice/m.test/txn1", json={"messages": messages})
    await alice.raw.ok(
        "PUT", "/sendToDevice/m.test/txn2", json={"messages": {bob.user_id: {bob.device_id: {"n": 2}}}}
    )

    first = await bob.sync()
    events = first["to_device"]["events"]
    assert [e["content"] for e in events] == [{"hello": "all"}, {"n": 2}]
    assert all(e["sender"] == alice.user_id and e["type"] == "m.test" for e in events)
    # The next token confirms (and deletes) them; the other device got its own copy of `*`.
    again = await bob.sync()
    assert again["to_device"]["events"] == []
    other = await bob2.sync()
    assert [e["content"] for e in other["to_device"]["events"]] == [{"hello": "all"}]


async def test_to_device_redelivered_until_confirmed(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await olm_user(server, http, "alice")
    bob = await olm_user(server, http, "bob")
    start = (await bob.sync())["next_batch"]
    await alice.raw.ok(
        "PUT", "/sendToDevice/m.test/t", json={"messages": {bob.user_id: {bob.device_id: {"x": 1}}}}
    )
    lost = await bob.raw.ok("GET", "/sync", params={"since": start, "timeout": "0"})
    assert len(lost["to_device"]["events"]) == 1
    retry = await bob.raw.ok("GET", "/sync", params={"since": start, "timeout": "0"})
    assert len(retry["to_device"]["events"]) == 1
    confirmed = await bob.raw.ok("GET", "/sync", params={"since": retry["next_batch"], "timeout": "0"})
    assert confirmed["to_device"]["events"] == []


async def test_to_device_wakes_long_poll(server: RunningServer, http: aiohttp.ClientSession) -> None:
    import asyncio

    alice = await olm_user(server, http, "alice")
    bob = await olm_user(server, http, "bob")
    await bob.sync()

    async def poll_until_message() -> dict[str, Any]:
        while True:  # other wake-ups (presence ...) may end a long-poll first
            resp = await bob.sync(timeout=10_000)
            if resp["to_device"]["events"]:
                return resp

    poll = asyncio.create_task(poll_until_message())
    await asyncio.sleep(0.3)
    await alice.raw.ok("PUT", "/sendToDevice/m.test/w", json={"messages": {bob.user_id: {bob.device_id: {}}}})
    resp = await asyncio.wait_for(poll, 5)
    assert len(resp["to_device"]["events"]) == 1


async def test_send_to_device_validation(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await olm_user(server, http, "alice")
    for body, errcode in (
        ({}, "M_MISSING_PARAM"),
        ({"messages": []}, "M_BAD_JSON"),
        ({"messages": {"notauser": {}}}, "M_INVALID_PARAM"),
        ({"messages": {alice.user_id: {"D": "string"}}}, "M_BAD_JSON"),
    ):
        status, resp = await alice.raw.request("PUT", "/sendToDevice/m.test/v", json=body)
        assert status == 400 and resp["errcode"] == errcode, (body, resp)


async def shared_room(a: OlmClient, b: OlmClient) -> str:
    room = await a.raw.create_room(preset="private_chat", invite=[b.user_id])
    status, body = await b.raw.join(room)
    assert status == 200, body
    return room


async def test_device_lists_changed_and_left(server: RunningServer, http: aiohttp.ClientSession) -> None:
    alice = await olm_user(server, http, "alice")
    bob = await olm_user(server, http, "bob")
    await alice.upload_keys()
    await bob.upload_keys()
    await alice.sync()
    room = await shared_room(alice, bob)
    # Bob joined: Alice is told to refresh his devices (and vice versa).
    sync = await alice.sync()
    assert bob.user_id in sync["device_lists"]["changed"]
    # A new device for Bob shows up as a change.
    bob2 = OlmClient.from_login(http, server.base_url, await server.login("bob"))
    await bob2.upload_keys()
    sync = await alice.sync()
    assert sync["device_lists"]["changed"] == [bob.user_id]
    changes = await alice.raw.ok("GET", "/keys/changes", params={"from": "s0_0", "to": sync["next_batch"]})
    assert bob.user_id in changes["changed"]
    # Bob leaves: he is in `left` and his later changes are no longer reported.
    await bob.raw.ok("POST", f"/rooms/{room}/leave", json={})
    sync = await alice.sync()
    assert sync["device_lists"]["left"] == [bob.user_id]
    bob3 = OlmClient.from_login(http, server.base_url, await server.login("bob"))
    await bob3.upload_keys()
    sync = await alice.sync()
    assert bob.user_id not in sync["device_lists"]["changed"]
    # Users who never shared a room see nothing.
    carol = await olm_user(server, http, "carol")
    await carol.sync()
    await bob2.upload_keys(one_time=1, fallback=False)
    assert (await carol.sync())["device_lists"]["changed"] == []
    status, _ = await alice.raw.request("GET", "/keys/changes", params={"from": "garbage", "to": "s1_0"})
    assert status == 400


async def test_device_deletion_removes_keys_and_inbox(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await olm_user(server, http, "alice")
    await alice.upload_keys()
    other = OlmClient.from_login(http, server.base_url, await server.login("alice"))
    await other.upload_keys()
    await other.raw.ok(
        "PUT", "/sendToDevice/m.test/x", json={"messages": {alice.user_id: {alice.device_id: {}}}}
    )
    status, body = await other.raw.request("DELETE", f"/devices/{alice.device_id}", json={})
    assert status == 401
    await other.raw.ok(
        "DELETE",
        f"/devices/{alice.device_id}",
        json={
            "auth": {
                "type": "m.login.password",
                "session": body["session"],
                "password": "password",
                "identifier": {"type": "m.id.user", "user": "alice"},
            }
        },
    )
    query = await other.raw.ok("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert list(query["device_keys"][alice.user_id]) == [other.device_id]
    claim = await other.raw.ok(
        "POST", "/keys/claim", json={"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    )
    assert claim["one_time_keys"] == {}


def sign_device(cs: CrossSigning, device_keys: dict[str, Any]) -> dict[str, Any]:
    return CrossSigning.sign_with(
        cs.self_signing,
        cs.user_id,
        {k: v for k, v in device_keys.items() if k not in ("signatures", "unsigned")},
    )


async def test_cross_signing_upload_and_visibility(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await olm_user(server, http, "alice")
    bob = await olm_user(server, http, "bob")
    await alice.upload_keys()
    await bob.upload_keys()
    await shared_room(alice, bob)
    await bob.sync()

    cs = CrossSigning(alice.user_id)
    # First upload needs no UIA.
    await alice.raw.ok("POST", "/keys/device_signing/upload", json=cs.upload_body())
    # Re-uploading the same keys is idempotent.
    await alice.raw.ok("POST", "/keys/device_signing/upload", json=cs.upload_body())
    # Alice's self-signing key signs her device; her device signs her master key.
    master = cs.key("master", cs.master)
    result = await alice.raw.ok(
        "POST",
        "/keys/signatures/upload",
        json={
            alice.user_id: {
                alice.device_id: sign_device(cs, alice.device_keys()),
                cs.master.public_key: alice.sign(master),
            }
        },
    )
    assert result["failures"] == {}

    sync = await bob.sync()
    assert alice.user_id in sync["device_lists"]["changed"]
    query = await bob.raw.ok("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert query["master_keys"][alice.user_id]["keys"] == master["keys"]
    assert f"ed25519:{alice.device_id}" in query["master_keys"][alice.user_id]["signatures"][alice.user_id]
    assert alice.user_id in query["self_signing_keys"]
    assert alice.user_id not in query["user_signing_keys"]  # only visible to Alice
    device = query["device_keys"][alice.user_id][alice.device_id]
    ssk_id = f"ed25519:{cs.self_signing.public_key}"
    assert ssk_id in device["signatures"][alice.user_id]
    ed25519_verify(cs.self_signing.public_key, canonical(device), device["signatures"][alice.user_id][ssk_id])
    own = await alice.raw.ok("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert alice.user_id in own["user_signing_keys"]

    # Bob cross-signs himself, then signs Alice's master key with his user-signing key.
    bob_cs = CrossSigning(bob.user_id)
    await bob.raw.ok("POST", "/keys/device_signing/upload", json=bob_cs.upload_body())
    alice_master = query["master_keys"][alice.user_id]
    signed = CrossSigning.sign_with(
        bob_cs.user_signing, bob.user_id, {k: v for k, v in alice_master.items() if k != "signatures"}
    )
    await bob.sync()
    result = await bob.raw.ok(
        "POST", "/keys/signatures/upload", json={alice.user_id: {cs.master.public_key: signed}}
    )
    assert result["failures"] == {}
    # Bob's clients learn that Alice's keys changed (so they see his signature on them).
    assert alice.user_id in (await bob.sync())["device_lists"]["changed"]
    by_bob = await bob.raw.ok("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert bob.user_id in by_bob["master_keys"][alice.user_id]["signatures"]
    by_alice = await alice.raw.ok("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert bob.user_id not in by_alice["master_keys"][alice.user_id]["signatures"]

    # A forged signature is reported as a failure and not stored.
    forged = sign_device(CrossSigning(alice.user_id), alice.device_keys())
    forged["signatures"] = {alice.user_id: {ssk_id: forged["signatures"][alice.user_id].popitem()[1]}}
    result = await alice.raw.ok(
        "POST", "/keys/signatures/upload", json={alice.user_id: {alice.device_id: forged}}
    )
    assert result["failures"][alice.user_id][alice.device_id]["errcode"] == "M_INVALID_SIGNATURE"


async def test_cross_signing_replacement_needs_password(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await olm_user(server, http, "alice")
    await alice.raw.ok("POST", "/keys/device_signing/upload", json=CrossSigning(alice.user_id).upload_body())
    replacement = CrossSigning(alice.user_id).upload_body()
    status, body = await alice.raw.request("POST", "/keys/device_signing/upload", json=replacement)
    assert status == 401 and body["flows"] == [{"stages": ["m.login.password"]}]
    auth = {
        "type": "m.login.password",
        "session": body["session"],
        "password": "wrong",
        "identifier": {"type": "m.id.user", "user": alice.user_id},
    }
    status, body = await alice.raw.request(
        "POST", "/keys/device_signing/upload", json={**replacement, "auth": auth}
    )
    assert status == 401 and body["errcode"] == "M_FORBIDDEN"
    auth["password"] = "password"
    await alice.raw.ok("POST", "/keys/device_signing/upload", json={**replacement, "auth": auth})
    query = await alice.raw.ok("POST", "/keys/query", json={"device_keys": {alice.user_id: []}})
    assert query["master_keys"][alice.user_id]["keys"] == replacement["master_key"]["keys"]

    # A self-signing key not signed by the master key is refused.
    bad = CrossSigning(alice.user_id)
    body_bad = {"self_signing_key": bad.key("self_signing", bad.self_signing)}
    status, body = await alice.raw.request(
        "POST", "/keys/device_signing/upload", json={**body_bad, "auth": {**auth, "session": "x"}}
    )
    assert status in (400, 401)


async def test_to_device_queue_is_paged_without_loss(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    alice = await olm_user(server, http, "alice")
    bob = await olm_user(server, http, "bob")
    await bob.sync()
    for i in range(250):
        await alice.raw.ok(
            "PUT", f"/sendToDevice/m.test/p{i}", json={"messages": {bob.user_id: {bob.device_id: {"i": i}}}}
        )
    received: list[int] = []
    for _ in range(10):
        resp = await bob.sync()
        events = resp["to_device"]["events"]
        assert len(events) <= 100
        assert not any(k.startswith("_") for k in resp), "internal keys leaked into the response"
        received.extend(e["content"]["i"] for e in events)
        if not events:
            break
    assert received == list(range(250))
