"""SasSession without any network: two sessions against each other, and libolm (python-olm, an
independent SAS implementation) as the other side to check the emoji, decimals and both MAC
methods are wired to the right primitives."""

from __future__ import annotations

from typing import Any

import pytest
import vodozemac
from nio.crypto import OlmDevice, Sas
from olm.sas import Sas as OlmSas

from clients.sas import MAC_LEGACY, MAC_V2, Own, SasCancel, SasSession, Stage

FLOW = "$request-event-id"
ENVELOPE = {"m.relates_to": {"rel_type": "m.reference", "event_id": FLOW}}
MASTER = "bWFzdGVyIGtleSBvZiBib2IgKG5vdCByZWFsbHkgYSBrZXkp"


def party(user_id: str, device_id: str) -> tuple[Own, OlmDevice]:
    account = vodozemac.Account()
    ed25519, curve25519 = account.ed25519_key.to_base64(), account.curve25519_key.to_base64()
    device = OlmDevice(user_id, device_id, {"ed25519": ed25519, "curve25519": curve25519})
    return Own(user_id, device_id, ed25519), device


ALICE, ALICE_DEVICE = party("@alice:x", "ALICEDEV")
BOB, BOB_DEVICE = party("@bob:y", "BOBDEV")


def exchange(start_overrides: dict[str, Any] | None = None) -> tuple[SasSession, SasSession]:
    """Alice starts, Bob accepts; both have each other's key and have confirmed."""
    alice = SasSession.offer(ALICE, BOB_DEVICE, FLOW, ENVELOPE)
    start = {**alice.start_content, **(start_overrides or {})}
    alice.start_content = start
    bob = SasSession.answer(BOB, ALICE_DEVICE, FLOW, ENVELOPE, start)
    alice.receive_accept(bob.accept_content())
    bob.receive_key(alice.key_content())
    alice.receive_key(bob.key_content())
    return alice, bob


def test_both_sides_agree_and_prove_device_and_master_keys() -> None:
    alice, bob = exchange()
    assert alice.mac_method == bob.mac_method == MAC_V2
    assert alice.emojis == bob.emojis and len(alice.emojis) == 7
    assert alice.decimals == bob.decimals and all(1000 <= n <= 9191 for n in alice.decimals)
    # Every content carries the flow's relation, never a transaction ID.
    relation = ENVELOPE["m.relates_to"]
    assert alice.start_content["m.relates_to"] == bob.accept_content()["m.relates_to"] == relation
    alice.confirm()
    bob.confirm()
    bob_keys = {f"ed25519:{BOB.device_id}": BOB.ed25519, f"ed25519:{MASTER}": MASTER}
    proven = alice.verify_mac(bob.mac_content(bob_keys), bob_keys)
    assert proven == set(bob_keys)
    alice_keys = {f"ed25519:{ALICE.device_id}": ALICE.ed25519}
    # Keys Bob does not know about are skipped, the known one must be proven.
    assert bob.verify_mac(alice.mac_content(alice_keys), alice_keys) == set(alice_keys)


def test_the_legacy_mac_method_when_the_other_side_has_only_that() -> None:
    alice, bob = exchange({"message_authentication_codes": [MAC_LEGACY]})
    assert alice.mac_method == bob.mac_method == MAC_LEGACY
    alice.confirm()
    bob.confirm()
    keys = {f"ed25519:{BOB.device_id}": BOB.ed25519}
    assert alice.verify_mac(bob.mac_content(keys), keys) == set(keys)


def test_sas_and_macs_match_libolm() -> None:
    """python-olm (libolm) on Alice's side: its SAS bytes and MACs must equal ours."""
    olm = OlmSas()
    start = SasSession.offer(ALICE, BOB_DEVICE, FLOW, ENVELOPE).start_content
    bob = SasSession.answer(BOB, ALICE_DEVICE, FLOW, ENVELOPE, start)
    bob.receive_key({"key": olm.pubkey, **ENVELOPE})
    olm.set_their_pubkey(bob.key_content()["key"])
    # The spec's SAS info for curve25519-hkdf-sha256: starter first.
    alice_info = f"{ALICE.user_id}|{ALICE.device_id}|{olm.pubkey}"
    bob_info = f"{BOB.user_id}|{BOB.device_id}|{bob.key_content()['key']}"
    info = f"MATRIX_KEY_VERIFICATION_SAS|{alice_info}|{bob_info}|{FLOW}"
    bits = "".join(f"{b:08b}" for b in olm.generate_bytes(info, 6))
    # The spec: seven 6-bit emoji indices, three 13-bit numbers plus 1000.
    assert [Sas.emoji.index(e) for e in bob.emojis] == [int(bits[i : i + 6], 2) for i in range(0, 42, 6)]
    assert bob.decimals == tuple(int(bits[i : i + 13], 2) + 1000 for i in range(0, 39, 13))
    bob.confirm()
    mac_info = (
        f"MATRIX_KEY_VERIFICATION_MAC{BOB.user_id}{BOB.device_id}{ALICE.user_id}{ALICE.device_id}{FLOW}"
    )
    key_id = f"ed25519:{BOB.device_id}"
    content = bob.mac_content({key_id: BOB.ed25519})
    assert content["mac"][key_id] == olm.calculate_mac_fixed_base64(BOB.ed25519, mac_info + key_id)
    assert content["keys"] == olm.calculate_mac_fixed_base64(key_id, mac_info + "KEY_IDS")
    bob.mac_method = MAC_LEGACY  # the deprecated method is libolm's original (mis-encoded) MAC
    legacy = bob.mac_content({key_id: BOB.ed25519})
    assert legacy["mac"][key_id] == olm.calculate_mac(BOB.ed25519, mac_info + key_id)


def test_a_key_that_does_not_match_the_commitment_cancels() -> None:
    alice = SasSession.offer(ALICE, BOB_DEVICE, FLOW, ENVELOPE)
    bob = SasSession.answer(BOB, ALICE_DEVICE, FLOW, ENVELOPE, alice.start_content)
    alice.receive_accept(bob.accept_content())
    other = SasSession.answer(BOB, ALICE_DEVICE, FLOW, ENVELOPE, alice.start_content)
    with pytest.raises(SasCancel) as cancel:
        alice.receive_key(other.key_content())  # a key Bob did not commit to
    assert cancel.value.code == "m.mismatched_commitment"
    assert alice.stage is Stage.ACCEPTED


@pytest.mark.parametrize("tamper", ["mac", "keys", "added_key", "unknown_only"])
def test_macs_that_do_not_prove_our_keys_cancel(tamper: str) -> None:
    alice, bob = exchange()
    alice.confirm()
    bob.confirm()
    keys = {f"ed25519:{BOB.device_id}": BOB.ed25519}
    content = bob.mac_content(keys)
    device_key = f"ed25519:{BOB.device_id}"
    if tamper == "mac":  # the MAC of another value under the same key ID
        content["mac"][device_key] = bob.mac_content({device_key: MASTER})["mac"][device_key]
    elif tamper == "keys":
        content["keys"] = bob.mac_content({"ed25519:OTHER": BOB.ed25519})["keys"]
    elif tamper == "added_key":
        content["mac"]["ed25519:EXTRA"] = content["mac"][device_key]
    else:
        content = bob.mac_content({"ed25519:UNKNOWN": BOB.ed25519})
    with pytest.raises(SasCancel) as cancel:
        alice.verify_mac(content, keys)
    assert cancel.value.code == "m.key_mismatch"


def test_out_of_order_and_unsupported_steps_cancel() -> None:
    alice = SasSession.offer(ALICE, BOB_DEVICE, FLOW, ENVELOPE)
    with pytest.raises(SasCancel) as early:
        alice.mac_content({})
    assert early.value.code == "m.unexpected_message"
    with pytest.raises(SasCancel) as unknown:
        SasSession.answer(BOB, ALICE_DEVICE, FLOW, ENVELOPE, {**alice.start_content, "hashes": ["sha512"]})
    assert unknown.value.code == "m.unknown_method"
    _, bob = exchange()
    with pytest.raises(SasCancel) as unconfirmed:
        bob.verify_mac({"mac": {}, "keys": ""}, {})  # before our user compared the SAS
    assert unconfirmed.value.code == "m.unexpected_message"
