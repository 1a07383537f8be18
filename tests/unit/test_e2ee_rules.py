"""Pure E2EE rules: backup key replacement, request parsing and signature checks, tokens."""

from __future__ import annotations

from typing import Any

import pytest
from canonicaljson import encode_canonical_json
from olm.account import Account
from olm.pk import PkSigning

from homeserver.errors import MatrixError
from homeserver.handlers.auth import Requester
from homeserver.handlers.e2e_keys import (
    cross_signing_public_key,
    parse_claim,
    parse_cross_signing_upload,
    parse_query,
    parse_stream_token,
    parse_upload,
    verify_ed25519,
)
from homeserver.handlers.key_backup import parse_key_data, parse_version
from homeserver.storage.key_backup import RoomKey, should_replace

USER = "@alice:example.org"
DEVICE = "DEVICEA"


def room_key(index: int, forwarded: int, verified: bool) -> RoomKey:
    return RoomKey("!r:x", "s", index, forwarded, verified, {})


@pytest.mark.parametrize(
    ("old", "new", "replace"),
    [
        (room_key(5, 0, False), room_key(9, 0, True), True),  # verified wins over a lower index
        (room_key(0, 0, True), room_key(0, 0, False), False),
        (room_key(5, 0, False), room_key(4, 9, False), True),  # lower index wins over forwards
        (room_key(5, 0, False), room_key(6, 0, False), False),
        (room_key(5, 2, False), room_key(5, 1, False), True),
        (room_key(5, 1, False), room_key(5, 1, False), False),  # equal: keep what we have
    ],
)
def test_backup_replacement_rule(old: RoomKey, new: RoomKey, replace: bool) -> None:
    assert should_replace(old, new) is replace


def signed_device_keys(account: Account, **overrides: Any) -> dict[str, Any]:
    keys = {
        "user_id": USER,
        "device_id": DEVICE,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            f"curve25519:{DEVICE}": account.identity_keys["curve25519"],
            f"ed25519:{DEVICE}": account.identity_keys["ed25519"],
        },
    }
    signature = account.sign(encode_canonical_json(keys).decode())
    keys["signatures"] = {USER: {f"ed25519:{DEVICE}": signature}}
    keys.update(overrides)
    return keys


REQUESTER = Requester(USER, DEVICE)


def test_parse_upload_accepts_self_signed_device_keys() -> None:
    account = Account()
    dk = signed_device_keys(account)
    req = parse_upload(
        {"device_keys": dk, "one_time_keys": {"signed_curve25519:AAA": {"key": "k"}}}, REQUESTER
    )
    assert req.device_keys == dk
    assert [(k.algorithm, k.key_id) for k in req.one_time_keys] == [("signed_curve25519", "AAA")]
    # unsigned data is not covered by the signature
    parse_upload({"device_keys": {**dk, "unsigned": {"x": 1}}}, REQUESTER)


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"device_keys": {"user_id": USER}}, "M_MISSING_PARAM"),
        ({"one_time_keys": []}, "M_BAD_JSON"),
        ({"one_time_keys": {"signed_curve25519:A": 5}}, "M_BAD_JSON"),
        ({"one_time_keys": {"signed_curve25519:A": {"nokey": 1}}}, "M_BAD_JSON"),
        ({"one_time_keys": {"a:" + "k" * 300: "x"}}, "M_BAD_JSON"),
        ({"one_time_keys": {"a:b": "x" * 5000}}, "M_TOO_LARGE"),
        ({"fallback_keys": {"alg:a": "x", "alg:b": "y"}}, "M_INVALID_PARAM"),
    ],
)
def test_parse_upload_errors(body: dict[str, Any], errcode: str) -> None:
    with pytest.raises(MatrixError) as e:
        parse_upload(body, REQUESTER)
    assert e.value.errcode == errcode


def test_device_keys_signature_is_checked() -> None:
    account, other = Account(), Account()
    dk = signed_device_keys(account)
    assert verify_ed25519(dk, USER, f"ed25519:{DEVICE}", account.identity_keys["ed25519"])
    assert not verify_ed25519(dk, USER, f"ed25519:{DEVICE}", other.identity_keys["ed25519"])
    assert not verify_ed25519(
        {**dk, "algorithms": []}, USER, f"ed25519:{DEVICE}", account.identity_keys["ed25519"]
    )
    assert not verify_ed25519(dk, USER, f"ed25519:{DEVICE}", "not base64!")
    forged = signed_device_keys(
        account, keys={**dk["keys"], f"ed25519:{DEVICE}": other.identity_keys["ed25519"]}
    )
    with pytest.raises(MatrixError) as e:
        parse_upload({"device_keys": forged}, REQUESTER)
    assert e.value.errcode == "M_INVALID_SIGNATURE"


def test_cross_signing_key_shape() -> None:
    signer = PkSigning(PkSigning.generate_seed())
    pub = signer.public_key
    assert cross_signing_public_key({"keys": {f"ed25519:{pub}": pub}}) == pub
    bad: dict[str, Any]
    for bad in (
        {"keys": {}},
        {"keys": {f"ed25519:{pub}": "other"}},
        {"keys": {"ed25519:a": "a", "ed25519:b": "b"}},
    ):
        with pytest.raises(MatrixError):
            cross_signing_public_key(bad)
    body = {"master_key": {"user_id": USER, "usage": ["master"], "keys": {f"ed25519:{pub}": pub}}}
    assert parse_cross_signing_upload(body, USER)["master"][0] == pub
    with pytest.raises(MatrixError):
        parse_cross_signing_upload({"master_key": {**body["master_key"], "usage": ["self_signing"]}}, USER)
    with pytest.raises(MatrixError):
        parse_cross_signing_upload({"master_key": {**body["master_key"], "user_id": "@bob:x"}}, USER)


def test_query_and_claim_parsing() -> None:
    assert parse_query({"device_keys": {USER: [], "@b:x": ["D"]}}) == {USER: [], "@b:x": ["D"]}
    assert parse_claim({"one_time_keys": {USER: {"D": "signed_curve25519"}}}) == {
        USER: {"D": "signed_curve25519"}
    }
    bad_query: dict[str, Any]
    for bad_query in ({}, {"device_keys": []}, {"device_keys": {"nope": []}}, {"device_keys": {USER: "D"}}):
        with pytest.raises(MatrixError):
            parse_query(bad_query)
    with pytest.raises(MatrixError):
        parse_claim({"one_time_keys": {USER: {"D": 1}}})


def test_tokens_and_versions() -> None:
    assert parse_stream_token("s42_7", "from") == 42
    assert parse_stream_token("s42", "from") == 42
    for bad in (None, "", "42", "sx_1", "t42"):
        with pytest.raises(MatrixError):
            parse_stream_token(bad, "from")
    assert parse_version("3") == 3
    assert parse_version("abc") is None
    with pytest.raises(MatrixError):
        parse_version(None)


def test_backup_key_data_validation() -> None:
    good = {"first_message_index": 1, "forwarded_count": 0, "is_verified": True, "session_data": {"a": 1}}
    assert parse_key_data("!r", "s", good).first_message_index == 1
    for bad in (
        {**good, "first_message_index": -1},
        {**good, "is_verified": "yes"},
        {**good, "session_data": "x"},
        {k: v for k, v in good.items() if k != "forwarded_count"},
        {**good, "first_message_index": True},
    ):
        with pytest.raises(MatrixError):
            parse_key_data("!r", "s", bad)
