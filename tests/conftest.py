from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.server import RunningServer, run_server


@pytest.fixture
async def server(tmp_path: object) -> AsyncIterator[RunningServer]:
    """A real Sotto server on a loopback port with a fresh SQLite database."""
    async with run_server(str(tmp_path)) as srv:
        yield srv
