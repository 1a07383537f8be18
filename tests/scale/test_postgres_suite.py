"""The core integration tests again, with the server fixture on PostgreSQL.

They run in a child pytest with SOTTO_TEST_DATABASE=postgres (the fixture then makes a
fresh database per test from a migrated template); only these files are rerun, so
the PostgreSQL pass adds seconds to `make test`, not a second full run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import available

REPO = Path(__file__).resolve().parents[2]
SUITE = [
    "tests/integration/test_sync.py",
    "tests/integration/test_nio_core.py",
    "tests/integration/test_spec_errors.py",
    "tests/integration/test_sync_fanout.py",
    "tests/integration/test_group_commit.py",
]


@pytest.mark.timeout(240)
def test_core_integration_suite_on_postgres() -> None:
    if not asyncio.run(available()):
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    env = dict(os.environ, SOTTO_TEST_DATABASE="postgres")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *SUITE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
    assert result.returncode == 0, tail
