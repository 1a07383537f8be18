"""Fast JSON encoding and decoding (orjson) for storage and HTTP bodies.

Canonical JSON for signing lives in homeserver.events.canonical; this module is
for everything that does not need to be canonical.
"""

from __future__ import annotations

from typing import Any

import orjson


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def dumpb(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(data: str | bytes) -> Any:
    return orjson.loads(data)
