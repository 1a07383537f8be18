"""Sync and pagination tokens.

A sync token "s{stream}_{ephemeral}" names a database stream position and
the in-memory ephemeral serial (typing); "s{stream}_{ephemeral}_{sticky}" also says that
sticky events (MSC4354) were delivered only up to an earlier position, `sticky` (one
response carries at most 100: homeserver.sync.sticky). A pagination token "t{stream}" is a
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
    # Sticky events were delivered up to here only (None: up to `stream`).
    sticky: int | None = None

    def __str__(self) -> str:
        if self.sticky is not None and self.sticky < self.stream:
            return f"s{self.stream}_{self.ephemeral}_{self.sticky}"
        return f"s{self.stream}_{self.ephemeral}"

    @classmethod
    def parse(cls, raw: str) -> SyncToken:
        try:
            if not raw.startswith("s"):
                raise ValueError
            stream, _, rest = raw[1:].partition("_")
            eph, _, sticky = rest.partition("_")
            position = int(stream)
            behind = int(sticky) if sticky else None
            if behind is not None and not 0 <= behind < position:
                raise ValueError
            return cls(position, int(eph or 0), behind)
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
