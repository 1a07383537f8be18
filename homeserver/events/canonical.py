"""Matrix canonical JSON (appendices: "Canonical JSON").

Role: the single place that turns JSON values into the exact bytes that are
hashed and signed. Everything that feeds a hash or a signature must go through
:func:`canonical_json` (or :func:`normalize_json` before handing data to
signedjson) so that all servers agree byte-for-byte.

Invariants:
* Output is UTF-8, shortest form, object keys sorted by code point, no
  insignificant whitespace (delegated to ``canonicaljson``).
* Numbers are emitted as integers without exponent or fraction.  A float that is
  mathematically an integer (``1e10``, ``-0.0``) is emitted as that integer, as
  the spec's own examples require; any other float is an error.
* :func:`check_canonical` is the stricter PDU check used by room versions >= 6:
  it rejects *any* float, integers outside ``[-(2**53)+1, 2**53-1]`` and
  non-string object keys.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from canonicaljson import encode_canonical_json

__all__ = [
    "MAX_SAFE_INTEGER",
    "MIN_SAFE_INTEGER",
    "CanonicalJsonError",
    "canonical_json",
    "canonical_json_checked",
    "check_canonical",
    "normalize_json",
]

MAX_SAFE_INTEGER = 2**53 - 1
MIN_SAFE_INTEGER = -(2**53) + 1


class CanonicalJsonError(ValueError):
    """The value cannot be (or, for PDUs, must not be) encoded as canonical JSON."""


def normalize_json(obj: object) -> Any:
    """Return ``obj`` with integral floats replaced by ints.

    The stdlib encoder used by ``canonicaljson`` writes ``1e10`` as
    ``10000000000.0``; the spec wants ``10000000000``.  We rewrite such floats
    rather than patching the encoder.  The input is returned unchanged (same
    object) when it contains no floats, so the common case does not copy.

    Raises CanonicalJsonError for non-integral or non-finite floats and for
    non-string object keys.
    """
    changed, value = _normalize(obj)
    return value if changed else obj


def _normalize(obj: object) -> tuple[bool, Any]:
    # bool is a subclass of int and must be left alone (true/false).
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return False, obj
    if isinstance(obj, float):
        if not math.isfinite(obj) or not obj.is_integer():
            raise CanonicalJsonError(f"non-integral number {obj!r} cannot be canonical JSON")
        return True, int(obj)
    if isinstance(obj, dict):
        changed = False
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CanonicalJsonError(f"object key {key!r} is not a string")
            sub_changed, out[key] = _normalize(value)
            changed = changed or sub_changed
        return changed, out
    if isinstance(obj, (list, tuple)):
        changed = False
        items: list[Any] = []
        for value in obj:
            sub_changed, new_value = _normalize(value)
            changed = changed or sub_changed
            items.append(new_value)
        # Tuples encode as arrays anyway; only copy when something changed.
        return changed, items if changed else obj
    raise CanonicalJsonError(f"value of type {type(obj).__name__} is not JSON")


def canonical_json(obj: object) -> bytes:
    """Encode ``obj`` as Matrix canonical JSON bytes."""
    try:
        return encode_canonical_json(normalize_json(obj))
    except UnicodeEncodeError as exc:
        # Lone surrogates can live in a Python str but have no UTF-8 encoding.
        raise CanonicalJsonError(f"string is not valid Unicode: {exc}") from exc
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CanonicalJsonError):
            raise
        raise CanonicalJsonError(str(exc)) from exc


def canonical_json_checked(obj: object) -> bytes:
    """:func:`canonical_json` of a value known to pass :func:`check_canonical`.

    Such a value holds only strings, safe integers, booleans, nulls, arrays and objects
    with string keys; for those orjson's sorted, compact UTF-8 output is canonical JSON
    byte for byte (same escapes, code point key order; see the unit tests). Anything
    orjson cannot encode goes the general way.
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return canonical_json(obj)


def check_canonical(obj: object) -> None:
    """Raise CanonicalJsonError unless ``obj`` satisfies the strict PDU rules.

    Room versions 6 and later require that PDUs contain no floats (even
    integral ones), no integers outside the IEEE-754 safe range, and only
    string keys.  Iterative to avoid recursion limits on hostile nesting.
    """
    stack: list[object] = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int):
            if not MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                raise CanonicalJsonError(f"integer {value} is outside the canonical JSON range")
        elif isinstance(value, float):
            raise CanonicalJsonError(f"float {value!r} is not allowed in canonical JSON")
        elif isinstance(value, dict):
            for key, sub in value.items():
                if not isinstance(key, str):
                    raise CanonicalJsonError(f"object key {key!r} is not a string")
                stack.append(sub)
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        else:
            raise CanonicalJsonError(f"value of type {type(value).__name__} is not JSON")
