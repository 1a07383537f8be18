"""Sync and pagination tokens.

A sync token "s{stream}_{ephemeral}" names a database stream position and
the in-memory ephemeral serial (typing). A pagination token "t{stream}" is a
boundary in one room's timeline: events at or below it are "before".
Sync tokens are accepted wherever a pagination token is.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.errors import Codes, MatrixError


@dataclass(frozen=True, slots=True)
class SyncToken:
    stream: int
    ephemeral: int

    def __str__(self) -> str:
        return f"s{self.stream}_{self.ephemeral}"

    @classmethod
    def parse(cls, raw: str) -> SyncToken:
        try:
            if not raw.startswith("s"):
                raise ValueError
            stream, _, eph = raw[1:].partition("_")
            return cls(int(stream), int(eph or 0))
        except ValueError:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid sync token") from None


def parse_pagination_token(raw: str) -> int:
    try:
        if raw.startswith("t"):
            return int(raw[1:])
        if raw.startswith("s"):
            return SyncToken.parse(raw).stream
        raise ValueError
    except (ValueError, MatrixError):
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid pagination token") from None


def pagination_token(stream: int) -> str:
    return f"t{stream}"
