"""PNG charts from a results JSON: latency against throughput, memory against connections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {
    "sotto-sqlite": "#1b9e77",
    "sotto-pg": "#66a61e",
    "sotto-workers": "#7570b3",
    "synapse-sqlite": "#d95f02",
    "synapse-pg": "#e7298a",
    "bare": "#666666",
}


def latency_vs_throughput(data: dict[str, Any], path: Path) -> None:
    res = data.get("results", {})
    series = dict(res.get("sweep", {}))
    if "bare" in res.get("ceiling", {}):
        series["bare"] = res["ceiling"]["bare"]
    if not series:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for target, r in series.items():
        points = [p for p in r.get("points", []) if p.get("latency", {}).get("n")]
        if not points:
            continue
        xs = [p["msgs_per_s"] for p in points]
        color = COLORS.get(target)
        ax.plot(xs, [p["latency"]["p50_ms"] for p in points], "o-", color=color, label=f"{target} p50")
        ax.plot(
            xs, [p["latency"]["p99_ms"] for p in points], "x--", color=color, alpha=0.6, label=f"{target} p99"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("messages/s (senders 1 … N, one room each)")
    ax.set_ylabel("send latency (ms)")
    ax.set_title("Send latency against throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def memory_vs_connections(data: dict[str, Any], path: Path) -> None:
    res = data.get("results", {}).get("memory", {})
    if not res:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for target, r in res.items():
        levels = r.get("levels") or []
        if not levels:
            continue
        xs = [0] + [lv["syncs"] for lv in levels]
        ys = [r["before_syncs_rss_bytes"] / 2**20] + [lv["rss_bytes"] / 2**20 for lv in levels]
        ax.plot(xs, ys, "o-", color=COLORS.get(target), label=target)
    ax.set_xlabel("concurrent long-polling /sync requests")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title("Memory against waiting syncs")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(data: dict[str, Any], directory: Path) -> None:
    mode = data.get("meta", {}).get("mode", "run")
    latency_vs_throughput(data, directory / f"{mode}-latency-vs-throughput.png")
    memory_vs_connections(data, directory / f"{mode}-memory-vs-connections.png")
