"""The integration suites again, with every test server on PostgreSQL.

Each suite runs in a child pytest with SOTTO_TEST_DATABASE=postgres: `run_server` then gives
each server a fresh database copied from a migrated template (`tests/support/postgres.py`),
and a test that restarts a server keeps its database (`lasting_database`). Tests of SQLite
itself stay in the main pass only. `make test` runs this module beside the rest of the
tests (tests/run_all.py).
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
# What only SQLite has (its WAL, its group commit) or only the SQLite bench target runs, and
# what picks its databases itself (the port from SQLite to PostgreSQL).
SQLITE_ONLY = [
    "tests/integration/test_sqlite_wal.py",
    "tests/integration/test_sqlite_group_commit.py",
    "tests/integration/test_bench_smoke.py",
    "tests/integration/test_port_db.py",
]
# Each suite's child run, with a bound well above its time here when both lanes share the 2 cores.
SUITES = {
    "integration": ("tests/integration", 1500),
    "federation": ("tests/federation", 600),
    "bot": ("tests/bot", 600),
    "security": ("tests/security", 900),
}


# The child run has its own bound (SUITES); pytest-timeout's default (300 s, pyproject.toml)
# must not cut it short first on a loaded machine.
@pytest.mark.timeout(max(bound for _, bound in SUITES.values()) + 60)
@pytest.mark.parametrize("suite", list(SUITES))
def test_suite_on_postgres(suite: str) -> None:
    if not asyncio.run(available()):
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    path, bound = SUITES[suite]
    ignored = [f"--ignore={p}" for p in SQLITE_ONLY]
    env = dict(os.environ, SOTTO_TEST_DATABASE="postgres")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ignored, path],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=bound,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the {suite} suite on PostgreSQL took over {bound} s: {e}")
    lines = (result.stdout + result.stderr).splitlines()
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    tail = "\n".join(failures[:40] + lines[-10:])
    assert result.returncode == 0, tail
    assert " passed" in lines[-1], tail
