"""A bounded run of the benchmark harness (`make bench` takes tens of minutes).

Every client-server scenario runs against Sotto on SQLite and the bare aiohttp ceiling,
at sizes that finish in seconds, through the same code as `python -m bench`; then the
report and the charts are rendered from the results. Figures are not judged here (timing
goals belong to the benchmark): only that every scenario ran without errors and that
every message reached every member.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import charts, report
from bench.__main__ import CS_SCENARIOS, Run, run_target
from bench.scenarios import Settings

pytestmark = pytest.mark.timeout(240)


async def test_every_scenario_runs_and_the_report_renders(tmp_path: Path) -> None:
    settings = dataclasses.replace(
        Settings.make(quick=True),
        latency_iterations=5,
        throughput_seconds=0.5,
        warmup_seconds=0.1,
        sweep=[1, 2],
        sweep_seconds=0.3,
        fanout_members=5,
        fanout_messages=2,
        memory_syncs=[20],
    )
    results_dir = tmp_path / "results"
    run = Run("smoke", results_dir / "smoke.json")
    # The bare target's memory floor is left out: its parked long-polls make it slow to stop.
    await run_target(run, "bare", tmp_path / "work", settings, {"throughput", "sweep"})
    await run_target(run, "sotto-sqlite", tmp_path / "work", settings, set(CS_SCENARIOS))

    results = run.data["results"]
    for scenario in CS_SCENARIOS:
        assert "error" not in results[scenario]["sotto-sqlite"], (scenario, results[scenario])
    for key in ("one_room_10_senders", "ten_rooms_of_2"):
        load = results["throughput"]["sotto-sqlite"][key]
        assert load["errors"] == 0 and load["msgs_per_s"] > 0, load
    fanout = results["fanout"]["sotto-sqlite"]
    assert (fanout["members"], fanout["missing"], fanout["sync_errors"]) == (5, 0, 0), fanout
    assert results["latency"]["sotto-sqlite"]["send_to_sync"]["n"] == 5
    assert results["ceiling"]["bare"]["ten_senders"]["msgs_per_s"] > 0
    assert results["memory"]["sotto-sqlite"]

    text = report.render(run.data)
    assert "msgs/s, 10 senders in one room" in text
    assert "send path ≥ 25% of the bare-aiohttp ceiling" in text
    charts.render(run.data, results_dir)
    assert sorted(p.name for p in results_dir.glob("*.png"))


def test_profile_load_reports_the_server_cpu_per_unit() -> None:
    """`python -m bench.profile <load> --no-sample`: the load runs against a pinned server and
    reports the server's CPU time per unit of work (the figure the A/B rounds compare)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.profile", "latency", "--no-sample", "--seconds", "1"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r"(\d+) sends, .*; server CPU ([\d.]+) ms per round", result.stdout)
    assert match is not None, result.stdout
    assert int(match.group(1)) > 0 and float(match.group(2)) > 0
