"""Turn a results JSON into the summary table and target checks in bench/README.md.

The README keeps its prose; only the part between the `results:start` and
`results:end` markers is rewritten. `python -m bench.report [results.json]` re-renders
it from a saved run without measuring again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

START = "<!-- results:start -->"
END = "<!-- results:end -->"

CS_COLUMNS = ["sotto-sqlite", "sotto-pg", "sotto-workers", "synapse-sqlite", "synapse-pg"]
HEADINGS = {
    "sotto-sqlite": "Sotto SQLite",
    "sotto-pg": "Sotto PG",
    "sotto-workers": "Sotto 2 workers",
    "synapse-sqlite": "Synapse SQLite",
    "synapse-pg": "Synapse PG",
}
MIB = 1024 * 1024


def _get(data: dict[str, Any], *path: Any) -> Any:
    cur: Any = data
    for key in path:
        if isinstance(cur, dict) and key in cur:
            cur = cur[key]
        elif isinstance(cur, list) and isinstance(key, int) and -len(cur) <= key < len(cur):
            cur = cur[key]
        else:
            return None
    return cur


def one_line(scenario: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return "ERROR " + str(r["error"])
    if scenario == "latency":
        e2e = r.get("send_to_sync", {})
        return f"send->sync p50 {e2e.get('p50_ms')} ms p99 {e2e.get('p99_ms')} ms"
    if scenario == "throughput":
        return (
            f"one room/10 senders {_get(r, 'one_room_10_senders', 'msgs_per_s')}/s, "
            f"10 rooms of 2 {_get(r, 'ten_rooms_of_2', 'msgs_per_s')}/s"
        )
    if scenario == "sweep":
        return " ".join(f"{p['senders']}:{p['msgs_per_s']}" for p in r.get("points", []))
    if scenario == "fanout":
        return (
            f"{r.get('members')} members: all delivered p50 {_get(r, 'all_delivered', 'p50_ms')} ms, "
            f"{r.get('deliveries_per_s')} deliveries/s, missing {r.get('missing')}"
        )
    if scenario == "memory":
        levels = ", ".join(
            f"{lv['syncs']}: {lv['rss_bytes'] / MIB:.0f} MiB ({lv['per_sync_bytes'] / 1024:.1f} KiB/sync)"
            for lv in r.get("levels", [])
        )
        return f"idle {r.get('idle_rss_bytes', 0) / MIB:.0f} MiB; {levels}"
    return json.dumps(r)[:160]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(a: Any, b: Any, invert: bool = False) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not a or not b:
        return "—"
    value = b / a if invert else a / b
    return f"{value:,.1f}x"


def _level(r: Any, syncs: int, key: str) -> Any:
    for level in _get(r, "levels") or []:
        if level["syncs"] == syncs:
            return level[key]
    return None


def cs_rows(res: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """(label, per-target values, lower-is-better)."""
    rows: list[tuple[str, dict[str, Any], bool]] = []

    def row(label: str, scenario: str, *path: Any, scale: float = 1.0, lower: bool = False) -> None:
        values = {}
        for t in CS_COLUMNS:
            v = _get(res.get(scenario, {}).get(t, {}), *path)
            values[t] = v * scale if isinstance(v, int | float) and scale != 1.0 else v
        rows.append((label, values, lower))

    row("send → sync p50 (ms)", "latency", "send_to_sync", "p50_ms", lower=True)
    row("send → sync p95 (ms)", "latency", "send_to_sync", "p95_ms", lower=True)
    row("send → sync p99 (ms)", "latency", "send_to_sync", "p99_ms", lower=True)
    row("msgs/s, 10 senders in one room", "throughput", "one_room_10_senders", "msgs_per_s")
    row("  send p99 at that load (ms)", "throughput", "one_room_10_senders", "latency", "p99_ms", lower=True)
    row("msgs/s, 10 rooms of 2 users", "throughput", "ten_rooms_of_2", "msgs_per_s")
    row("msgs/s, best point of the sweep", "sweep", "best", "msgs_per_s")
    row("fan-out: members", "fanout", "members")
    row("fan-out: all members have it, p50 (ms)", "fanout", "all_delivered", "p50_ms", lower=True)
    row("fan-out: all members have it, p99 (ms)", "fanout", "all_delivered", "p99_ms", lower=True)
    row("fan-out: deliveries/s", "fanout", "deliveries_per_s")
    row("idle RSS (MiB)", "memory", "idle_rss_bytes", scale=1 / MIB, lower=True)
    rows.append(
        (
            "RSS with 1,000 syncs (MiB)",
            {t: _mib(_level(res.get("memory", {}).get(t), 1000, "rss_bytes")) for t in CS_COLUMNS},
            True,
        )
    )
    rows.append(
        (
            "RSS with 10,000 syncs (MiB)",
            {t: _mib(_level(res.get("memory", {}).get(t), 10000, "rss_bytes")) for t in CS_COLUMNS},
            True,
        )
    )
    for syncs in (1000, 10000):
        rows.append(
            (
                f"memory per syncing client at {syncs:,} (KiB)",
                {t: _kib(_per_client(res.get("memory", {}).get(t), syncs)) for t in CS_COLUMNS},
                True,
            )
        )
    return rows


def _mib(v: Any) -> Any:
    return v / MIB if isinstance(v, int | float) else None


def _kib(v: Any) -> Any:
    return v / 1024 if isinstance(v, int | float) else None


def _per_client(r: Any, syncs: int | None = None) -> Any:
    """Per-sync memory at `syncs` concurrent syncs, or at the largest level measured."""
    levels = _get(r, "levels") or []
    if syncs is not None:
        return _level(r, syncs, "per_sync_bytes")
    return levels[-1]["per_sync_bytes"] if levels else None


def _common_level(*results: Any) -> int | None:
    """The largest number of concurrent syncs measured for every one of `results`."""
    sets = [{lv["syncs"] for lv in (_get(r, "levels") or [])} for r in results if r]
    common = set.intersection(*sets) if sets else set()
    return max(common) if common else None


def _with_sweep_best(res: dict[str, Any]) -> dict[str, Any]:
    res = dict(res)
    sweep = {}
    for t, r in res.get("sweep", {}).items():
        points = r.get("points") or []
        best = max(points, key=lambda p: p["msgs_per_s"]) if points else None
        sweep[t] = {**r, "best": best}
    res["sweep"] = sweep
    return res


def render_table(data: dict[str, Any]) -> str:
    res = _with_sweep_best(data.get("results", {}))
    lines = [
        "| | " + " | ".join(HEADINGS[t] for t in CS_COLUMNS) + " | Sotto/Synapse SQLite | Sotto/Synapse PG |",
        "|---|" + "---:|" * (len(CS_COLUMNS) + 2),
    ]
    for label, values, lower in cs_rows(res):
        cells = [_fmt(values.get(t)) for t in CS_COLUMNS]
        sq = _ratio(values.get("sotto-sqlite"), values.get("synapse-sqlite"), invert=lower)
        pg = _ratio(values.get("sotto-pg"), values.get("synapse-pg"), invert=lower)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {sq} | {pg} |")
    lines.append("")
    lines.append("Ratios are “how many times better Sotto is” (higher is better for Sotto in every row).")
    return "\n".join(lines)


def render_federation(data: dict[str, Any]) -> str:
    res = data.get("results", {})
    fed = res.get("federation", {})
    out = []
    if fed:
        out += [
            "| federation pair (sender → receiver) | msgs/s | seen by the receiver's /sync | "
            "receiver CPU per message (ms) | latency p50 (ms) | latency p99 (ms) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for pair, r in fed.items():
            if "error" in r:
                out.append(f"| {pair} | error: {r['error'][:60]} | | | | |")
                continue
            tp = _get(r, "throughput") or {}
            seen = f"{_fmt(tp.get('received'))} of {_fmt(tp.get('messages'))}"
            out.append(
                f"| {pair} | {_fmt(_get(r, 'throughput', 'msgs_per_s'))} | {seen} | "
                f"{_fmt(tp.get('receiver_cpu_ms_per_msg'), 2)} | "
                f"{_fmt(_get(r, 'latency', 'p50_ms'))} | {_fmt(_get(r, 'latency', 'p99_ms'))} |"
            )
        windows = {_get(r, "throughput", "window") for r in fed.values()} - {None}
        if windows:
            out += [
                "",
                f"Throughput: 10 senders, at most {_fmt(max(windows))} messages sent and not yet seen "
                "by the receiver's `/sync`.",
            ]
        out.append("")
    join = res.get("join_state", {})
    if join:
        out += [
            "| joining a room over federation | state events | seconds | peak RSS growth (MiB) |",
            "|---|---:|---:|---:|",
        ]
        for joiner, r in join.items():
            if "error" in r:
                out.append(f"| {joiner} | error: {r['error'][:60]} | | |")
                continue
            out.append(
                f"| {joiner} | {_fmt(r.get('state_events'))} | {_fmt(r.get('join_seconds'), 2)} | "
                f"{_fmt(_mib(r.get('peak_growth_bytes')))} |"
            )
        out.append("")
    ceiling = res.get("ceiling", {}).get("bare")
    if ceiling:
        bare = _get(ceiling, "ten_senders", "msgs_per_s")
        sotto = _get(res, "throughput", "sotto-sqlite", "one_room_10_senders", "msgs_per_s")
        frac = (
            f"{sotto / bare:.0%}"
            if isinstance(bare, int | float) and bare and isinstance(sotto, int | float)
            else "—"
        )
        out.append(
            f"Ceiling: a bare aiohttp handler answers {_fmt(bare)} sends/s under the same 10-sender load; "
            f"Sotto's send path (SQLite, one process) is {frac} of it."
        )
        out.append("")
    floor = res.get("memory", {}).get("bare")
    if floor and _get(floor, "levels"):
        level = _get(floor, "levels")[-1]["syncs"]
        sotto_kib = _kib(_per_client(res.get("memory", {}).get("sotto-sqlite"), level))
        out.append(
            f"Memory floor: the bare aiohttp handler holding {level:,} parked `/sync` requests (no "
            f"homeserver state at all) grows by {_fmt(_kib(_per_client(floor, level)))} KiB per request; "
            f"Sotto (SQLite) by {_fmt(sotto_kib)} KiB (Sotto detaches a waiting long-poll from "
            "aiohttp's request machinery: homeserver/api/detached.py)."
        )
        out.append("")
    return "\n".join(out)


def targets_check(data: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    res = _with_sweep_best(data.get("results", {}))
    checks: list[tuple[str, str, bool | None]] = []

    def tput(t: str) -> Any:
        values = [
            _get(res, "throughput", t, "one_room_10_senders", "msgs_per_s"),
            _get(res, "throughput", t, "ten_rooms_of_2", "msgs_per_s"),
        ]
        nums = [v for v in values if isinstance(v, int | float)]
        return max(nums) if nums else None

    syn = [v for v in (tput("synapse-sqlite"), tput("synapse-pg")) if v]
    syn_best = max(syn) if syn else None
    one = [v for v in (tput("sotto-sqlite"), tput("sotto-pg")) if v]
    one_best = max(one) if one else None
    if one_best and syn_best:
        x = one_best / syn_best
        checks.append(
            (
                "≥ 30x Synapse's message throughput, one process",
                f"{x:.1f}x (best Sotto vs best Synapse)",
                x >= 30,
            )
        )
    workers = tput("sotto-workers")
    if workers and syn_best:
        x = workers / syn_best
        checks.append(("≥ 50x Synapse's message throughput with workers", f"{x:.1f}x", x >= 50))
    p50 = _get(res, "latency", "sotto-sqlite", "send_to_sync", "p50_ms")
    if p50 is not None:
        checks.append(("send → sync p50 ≤ 5 ms", f"{p50:.2f} ms (SQLite)", p50 <= 5))
    for db in ("sqlite", "pg"):
        s99 = _get(res, "latency", f"sotto-{db}", "send_to_sync", "p99_ms")
        y99 = _get(res, "latency", f"synapse-{db}", "send_to_sync", "p99_ms")
        if s99 and y99:
            checks.append(
                (
                    f"send → sync p99 ≤ 1/5 of Synapse's ({db})",
                    f"{s99:.1f} vs {y99:.1f} ms = 1/{y99 / s99:.1f}",
                    s99 * 5 <= y99,
                )
            )
    for db in ("sqlite", "pg"):
        ours, theirs = res.get("memory", {}).get(f"sotto-{db}"), res.get("memory", {}).get(f"synapse-{db}")
        level = _common_level(ours, theirs)
        s_mem = _per_client(ours, level) if level else None
        y_mem = _per_client(theirs, level) if level else None
        if s_mem and y_mem:
            checks.append(
                (
                    f"≤ 1/5 of Synapse's memory per syncing client ({db}, {level:,} syncs)",
                    f"{s_mem / 1024:.1f} vs {y_mem / 1024:.1f} KiB = 1/{y_mem / s_mem:.1f}",
                    s_mem * 5 <= y_mem,
                )
            )
    ten_k = _level(res.get("memory", {}).get("sotto-sqlite"), 10000, "finished_early")
    if ten_k is not None:
        checks.append(
            (
                "10,000 concurrent long-polling syncs in one process",
                f"{ten_k} of 10,000 ended early",
                ten_k == 0,
            )
        )
    bare = _get(res, "ceiling", "bare", "ten_senders", "msgs_per_s")
    sotto = _get(res, "throughput", "sotto-sqlite", "one_room_10_senders", "msgs_per_s")
    if bare and sotto:
        checks.append(
            ("send path ≥ 25% of the bare-aiohttp ceiling", f"{sotto / bare:.0%}", sotto / bare >= 0.25)
        )
    return checks


def render(data: dict[str, Any]) -> str:
    meta = data.get("meta", {})
    m = meta.get("machine", {})
    parts = [
        START,
        f"Run: **{meta.get('mode')}** mode, {meta.get('date')}, commit `{m.get('sotto_commit')}`: "
        f"`{meta.get('command')}`"
        + "".join(
            f"; then `{r['command']}` ({r['date']}"
            + (f", commit `{r['commit']}`)" if r.get("commit") else ")")
            for r in meta.get("merged_runs", [])
        ),
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB RAM, "
        f"Linux {m.get('kernel')}, Python {m.get('python')}, "
        f"PostgreSQL {m.get('postgresql')}, Redis {m.get('redis')}.",
        "",
        "Targets: " + "; ".join(f"`{k}` = {v}" for k, v in data.get("targets", {}).items()) + ".",
        "",
        render_table(data),
        "",
        render_federation(data),
        "### Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, measured, ok in targets_check(data):
        parts.append(f"| {name} | {measured} | {'yes' if ok else 'no' if ok is not None else '—'} |")
    parts += ["", END]
    return "\n".join(parts)


def update_readme(data: dict[str, Any], path: Path) -> None:
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(head + render(data) + tail)


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "full.json"
    update_readme(json.loads(source.read_text()), Path(__file__).parent / "README.md")
