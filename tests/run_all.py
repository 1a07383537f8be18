"""`make test`: every test, in two lanes side by side.

The PostgreSQL re-runs of the integration, federation, bot and security suites
(`tests/scale/test_postgres_suite.py`) were half of a sequential run's time, and most of
what a test does is wait on sockets. So they run beside the main pass:
- the main lane: every other test, output here as it goes;
- the PostgreSQL lane: `tests/scale/test_postgres_suite.py`, its output shown at the end.
Each lane takes test ports from its own range (SOTTO_TEST_PORTS, tests/support/server.py),
and what both would install on first use (Synapse, the Node packages) is installed before
either starts. `pytest` alone still runs everything, one test after another.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSTGRES_LANE = "tests/scale/test_postgres_suite.py"
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
# Below the kernel's ephemeral ports (32768 up), split in two.
MAIN_PORTS = "20000-26399"
POSTGRES_PORTS = "26400-32700"


def prepare() -> None:
    """Install what tests install on first use, once, before two lanes could race to."""
    from tests.federation.synapse import ensure_synapse
    from tests.integration.test_e2ee_js import ensure_js_sdk

    installs: list[tuple[str, Callable[[], object]]] = [("Synapse", ensure_synapse)]
    # Without npm the js-sdk tests report that themselves.
    if shutil.which("npm") is not None:
        installs.append(("matrix-js-sdk", ensure_js_sdk))
    for name, ensure in installs:
        try:
            ensure()
        except Exception as e:  # the tests that need it fail with the details
            print(f"run_all: {name} is not installed ({e})", flush=True)


def main(args: list[str]) -> int:
    prepare()
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as lane_log:
        lane = subprocess.Popen(
            # Its tests wait on child runs bounded by their own limits: no stack dumps at 240 s.
            [*PYTEST, "-o", "faulthandler_timeout=0", *args, POSTGRES_LANE],
            cwd=REPO,
            env=dict(os.environ, SOTTO_TEST_PORTS=POSTGRES_PORTS),
            stdout=lane_log,
            stderr=subprocess.STDOUT,
        )
        try:
            main_rc = subprocess.run(
                [*PYTEST, *args, f"--ignore={POSTGRES_LANE}"],
                cwd=REPO,
                env=dict(os.environ, SOTTO_TEST_PORTS=MAIN_PORTS),
            ).returncode
            if lane.poll() is None:
                print("run_all: waiting for the PostgreSQL lane", flush=True)
            lane_rc = lane.wait()
        finally:
            if lane.poll() is None:
                lane.kill()
        lane_log.seek(0)
        print(f"\n---- the PostgreSQL lane ({POSTGRES_LANE}) ----")
        print(lane_log.read(), end="")
    minutes = (time.monotonic() - started) / 60
    # pytest's "no tests ran" (5) is not a failure of a lane whose tests all skipped.
    failed = [name for name, rc in (("main", main_rc), ("PostgreSQL", lane_rc)) if rc not in (0, 5)]
    print(
        f"run_all: both lanes done in {minutes:.1f} min; "
        + (f"failed: {', '.join(failed)}" if failed else "all passed")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
