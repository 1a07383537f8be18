"""`python -m bench [--quick]`: run every scenario against every target, write results.

The load generator pins itself to CPU 1 and single-process servers to CPU 0, so each
side has a core of its own (PostgreSQL and Redis are shared services, not pinned).
Multi-worker Sotto runs on both cores. Results go to bench/results/<mode>.json
(plus a dated copy), charts to bench/results/*.png, and the summary table into
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import charts, report
from bench.client import new_session
from bench.federation import FEDERATION_SCENARIOS, run_federation
from bench.scenarios import Settings, ceiling, fanout, latency, memory, sweep, throughput
from bench.targets import BareTarget, SottoTarget, SynapseTarget, Target
from tests.federation.support import make_ca

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
GENERATOR_CPU = 1
SERVER_CPU = 0

Scenario = Callable[[Target, aiohttp.ClientSession, Settings], Awaitable[dict[str, Any]]]

CS_SCENARIOS: dict[str, Scenario] = {
    "latency": latency,
    "throughput": throughput,
    "sweep": sweep,
    "fanout": fanout,
    "memory": memory,
}

TARGETS = ["bare", "sotto-sqlite", "sotto-pg", "sotto-workers", "synapse-sqlite", "synapse-pg"]
# The multi-worker target shares the generator's core, so it runs what it is for.
WORKER_SCENARIOS = {"latency", "throughput", "sweep", "fanout"}


def make_target(name: str, workdir: Path) -> Target:
    one = {SERVER_CPU}
    if name == "bare":
        return BareTarget(name, workdir, cpus=one)
    if name == "sotto-sqlite":
        return SottoTarget(name, workdir, database="sqlite", cpus=one)
    if name == "sotto-pg":
        return SottoTarget(name, workdir, database="postgres", cpus=one)
    if name == "sotto-workers":
        return SottoTarget(name, workdir, database="postgres", workers=2, cpus={0, 1})
    if name == "synapse-sqlite":
        return SynapseTarget(name, workdir, database="sqlite", cpus=one)
    if name == "synapse-pg":
        return SynapseTarget(name, workdir, database="postgres", cpus=one)
    raise SystemExit(f"unknown target {name}")


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])

    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "unknown"

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": version(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-Atc", "SHOW server_version"]
        ),
        "redis": version(["redis-server", "--version"]).split(" ")[2]
        if version(["redis-server", "--version"])
        else "",
        "sotto_commit": version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
    }


class Run:
    def __init__(self, mode: str, out: Path) -> None:
        self.out = out
        self.mode = mode
        self.data: dict[str, Any] = {
            "meta": {
                "mode": mode,
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
                "machine": machine(),
                "pinning": {"load_generator_cpu": GENERATOR_CPU, "single_process_server_cpu": SERVER_CPU},
            },
            "targets": {},
            "results": {},
        }

    def record(self, scenario: str, target: str, value: dict[str, Any]) -> None:
        self.data["results"].setdefault(scenario, {})[target] = value
        self.save()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.data, indent=1, sort_keys=True))


def applicable(name: str, only: set[str]) -> set[str]:
    if name == "bare":
        return only & {"throughput", "sweep", "memory"}
    wanted = only & set(CS_SCENARIOS)
    return wanted & WORKER_SCENARIOS if name == "sotto-workers" else wanted


async def run_target(run: Run, name: str, workdir: Path, settings: Settings, only: set[str]) -> None:
    if not applicable(name, only):
        return
    target = make_target(name, workdir)
    run.data["targets"][name] = target.describe()
    print(f"== {name}: {target.describe()}", flush=True)
    t = time.perf_counter()
    await target.start()
    print(f"   started in {time.perf_counter() - t:.1f}s", flush=True)
    try:
        async with new_session() as session:
            if name == "bare":
                if "throughput" in only or "sweep" in only:
                    run.record("ceiling", name, await ceiling(target, session, settings))
                if "memory" in only:
                    result = await memory(target, session, settings)
                    run.record("memory", name, result)
                    print(f"   memory: {report.one_line('memory', result)}", flush=True)
                return
            ran_any = False
            for scenario, fn in CS_SCENARIOS.items():
                if scenario not in only or (name == "sotto-workers" and scenario not in WORKER_SCENARIOS):
                    continue
                if scenario == "memory" and ran_any:
                    # Memory is measured on a fresh process: earlier scenarios grow caches.
                    await target.stop()
                    await target.start()
                t = time.perf_counter()
                try:
                    result = await fn(target, session, settings)
                except Exception as e:
                    traceback.print_exc()
                    result = {"error": f"{type(e).__name__}: {e}"}
                result["seconds"] = round(time.perf_counter() - t, 1)
                ran_any = True
                run.record(scenario, name, result)
                print(
                    f"   {scenario}: {report.one_line(scenario, result)} ({result['seconds']}s)", flush=True
                )
    finally:
        await target.stop()


async def main_async(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {GENERATOR_CPU})
    settings = Settings.make(args.quick)
    mode = "quick" if args.quick else "full"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = REPO / "bench" / "work" / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    results = Path(args.scratch) if args.scratch else RESULTS
    out = results / f"{mode}.json"
    run = Run(mode, out)
    only = set(args.scenarios.split(",")) if args.scenarios else {*CS_SCENARIOS, *FEDERATION_SCENARIOS}
    targets = args.targets.split(",") if args.targets else TARGETS
    if args.merge and out.exists():
        previous = json.loads(out.read_text())
        run.data["targets"] = previous.get("targets", {})
        run.data["results"] = previous.get("results", {})
        if "meta" in previous:
            # The first run's header stays; later partial runs are listed under it.
            merged = previous["meta"].get("merged_runs", [])
            entry = {k: run.data["meta"][k] for k in ("date", "command")}
            entry["commit"] = run.data["meta"]["machine"]["sotto_commit"]
            merged.append(entry)
            run.data["meta"] = {**previous["meta"], "merged_runs": merged}
    for name in targets:
        try:
            await run_target(run, name, workdir, settings, only)
        except Exception:
            traceback.print_exc()
    if only & set(FEDERATION_SCENARIOS) and not args.targets:
        ca = make_ca(str(workdir / "ca"))
        await run_federation(run.record, run.data["targets"], workdir, settings, ca, only, SERVER_CPU)
    run.save()
    (results / f"{mode}-{stamp}.json").write_text(out.read_text())
    charts.render(run.data, results)
    if not args.scratch:
        report.update_readme(run.data, REPO / "bench" / "README.md")
    print(f"results: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes; finishes in minutes")
    parser.add_argument("--scenarios", default="", help="comma-separated subset of scenarios")
    parser.add_argument("--targets", default="", help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--merge", action="store_true", help="keep other results already in the JSON file")
    parser.add_argument(
        "--scratch",
        default="",
        help="write results and charts here instead of bench/results; leave the README alone",
    )
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
