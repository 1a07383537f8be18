"""Recovery keys as the spec writes them (appendices: cryptographic key representation).

A 32-byte key is shown as base58 (Bitcoin alphabet) of 0x8B 0x01 ‖ key ‖ parity, where the parity
byte makes the XOR of all bytes zero, in groups of four characters. Base58 is an encoding for
humans, not cryptography; the parity byte catches most typos.
"""

from __future__ import annotations

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_PREFIX = bytes([0x8B, 0x01])
KEY_BYTES = 32


class RecoveryKeyError(ValueError):
    """Not a well-formed recovery key."""


def encode_recovery_key(private_key: bytes) -> str:
    data = _PREFIX + private_key
    parity = 0
    for byte in data:
        parity ^= byte
    data += bytes([parity])
    number = int.from_bytes(data, "big")
    chars = ""
    while number:
        number, rem = divmod(number, 58)
        chars = _B58[rem] + chars
    chars = "1" * (len(data) - len(data.lstrip(b"\0"))) + chars
    return " ".join(chars[i : i + 4] for i in range(0, len(chars), 4))


def decode_recovery_key(text: str) -> bytes:
    chars = "".join(text.split())
    number = 0
    for ch in chars:
        index = _B58.find(ch)
        if index < 0:
            raise RecoveryKeyError("the recovery key contains characters that are not base58")
        number = number * 58 + index
    length = len(_PREFIX) + 32 + 1
    try:
        data = number.to_bytes(length, "big")
    except OverflowError:
        raise RecoveryKeyError("the recovery key is too long") from None
    parity = 0
    for byte in data:
        parity ^= byte
    if data[:2] != _PREFIX or parity != 0:
        raise RecoveryKeyError("the recovery key is mistyped (bad prefix or parity)")
    return data[2:-1]
