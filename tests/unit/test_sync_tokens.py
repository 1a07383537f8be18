"""Sync tokens: "s{stream}_{ephemeral}", and "s{stream}_{ephemeral}_{sticky}" when sticky
events (MSC4354) were delivered only up to an earlier position."""

from __future__ import annotations

import pytest

from homeserver.errors import MatrixError
from homeserver.sync.tokens import SyncToken, parse_pagination_token


def test_round_trips() -> None:
    assert SyncToken.parse("s12_3") == SyncToken(12, 3)
    assert SyncToken.parse("s12") == SyncToken(12, 0)
    behind = SyncToken.parse("s12_3_7")
    assert (behind.stream, behind.ephemeral, behind.sticky) == (12, 3, 7)
    assert str(behind) == "s12_3_7"
    # Caught up: the ordinary form.
    assert str(SyncToken(12, 3, 12)) == str(SyncToken(12, 3)) == "s12_3"
    assert parse_pagination_token("s12_3_7") == 12


@pytest.mark.parametrize("raw", ["s12_3_12", "s12_3_13", "s12_3_-1", "s12_3_x", "12_3", "s_3"])
def test_malformed(raw: str) -> None:
    with pytest.raises(MatrixError) as caught:
        SyncToken.parse(raw)
    assert caught.value.errcode == "M_INVALID_PARAM"
