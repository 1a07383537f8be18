"""Profile Sotto's hot paths under load with py-spy, and summarise where the time goes.

    python -m bench.profile send      # 10 senders in one room
    python -m bench.profile rooms     # 10 rooms of 2 users, all 20 sending
    python -m bench.profile fanout    # one sender, N members long-polling /sync
    python -m bench.profile sync      # idle-room incremental syncs, back to back
    python -m bench.profile latency   # one send at a time to a member parked in /sync
    python -m bench.profile federation  # a second Sotto sends; the receiving server is profiled
    python -m bench.profile appservice  # `send`, with an application service in the room
    python -m bench.profile send --no-sample   # the load alone, for before/after runs

The server runs as in the benchmarks (pinned to CPU 0, load generator on CPU 1);
py-spy samples it for the measured window. Output: bench/results/profile-<name>.txt
with the top functions by own time and by inclusive time (Sotto's code only), and
the raw collapsed stacks next to it (load them into speedscope or flamegraph.pl).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import yaml

from bench.client import SYNC_FILTER, Client, gather_limited, new_session, timeline_event_ids
from bench.federation import fed_pair
from bench.scenarios import Settings, _drive, latency_round, make_users, room_with, rooms_of_two
from bench.targets import SottoTarget, cpu_seconds
from tests.federation.support import make_ca
from tests.support.appservice import AS_TOKEN, Receiver, write_registration
from tests.support.otlp_collector import otlp_collector
from tests.support.server import free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
OWN = ("homeserver/", "bridge/")
# A load's outcome: its figures, the server CPU seconds it used, and how many units of work
# (messages, deliveries, syncs, rounds) those were.
Outcome = tuple[str, float, int, str]
Cpu = Callable[[], float]


def summarise(raw: Path, top: int = 40) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        if frames and frames[-1].startswith("_worker (concurrent/futures/thread.py"):
            continue  # an idle thread-pool worker waiting for work
        total += count
        if frames:
            own[frames[-1]] += count
        seen = set()
        for frame in frames:
            if any(p in frame for p in OWN) and frame not in seen:
                seen.add(frame)
                inclusive[frame] += count
    lines = [f"samples: {total}", "", "own time (any code):"]
    lines += [f"{100 * n / total:6.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive time (Sotto code):"]
    lines += [f"{100 * n / total:6.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


async def load_send(target: SottoTarget, seconds: float, cpu: Cpu) -> Outcome:
    async with new_session() as session:
        users = await make_users(target, session, "ps", 10)
        room_id = await room_with(users[0], users[1:])
        start = cpu()
        rate, _, _ = await _drive([(u, room_id) for u in users], seconds, 0.0)
    return f"{rate:.0f} msgs/s", cpu() - start, round(rate * seconds), "message"


async def load_rooms(target: SottoTarget, seconds: float, cpu: Cpu) -> Outcome:
    async with new_session() as session:
        senders = await rooms_of_two(await make_users(target, session, "pr", 20))
        start = cpu()
        rate, _, _ = await _drive(senders, seconds, 0.0)
    return f"{rate:.0f} msgs/s", cpu() - start, round(rate * seconds), "message"


async def load_fanout(target: SottoTarget, seconds: float, cpu: Cpu, members: int = 200) -> Outcome:
    async with new_session() as session:
        sender, *others = await make_users(target, session, "pf", members + 1)
        room_id = await room_with(sender, others)
        stop = asyncio.Event()
        delivered = 0

        async def listen(member: Client) -> None:
            nonlocal delivered
            since = (await member.sync(filter=SYNC_FILTER))["next_batch"]
            while not stop.is_set():
                result = await member.sync(since, 30_000, SYNC_FILTER)
                since = result["next_batch"]
                delivered += len(timeline_event_ids(result, room_id))

        tasks = [asyncio.create_task(listen(m)) for m in others]
        await asyncio.sleep(3)
        start = cpu()
        end = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < end:
            await sender.send(room_id, "fan")
            sent += 1
            await asyncio.sleep(0.2)
        used = cpu() - start
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return f"{sent} messages, {delivered} deliveries in {seconds:.0f}s", used, delivered, "delivery"


async def load_sync(target: SottoTarget, seconds: float, cpu: Cpu) -> Outcome:
    async with new_session() as session:
        users = await make_users(target, session, "py", 10)
        room_id = await room_with(users[0], users[1:])
        for u in users:
            await u.send(room_id, "hello")
        since = [(await u.sync(filter=SYNC_FILTER))["next_batch"] for u in users]
        start = cpu()
        end = time.monotonic() + seconds
        count = 0

        async def loop(i: int) -> None:
            nonlocal count
            while time.monotonic() < end:
                await users[i].sync(since[i], 0, SYNC_FILTER)
                count += 1

        await gather_limited(len(users), len(users), loop)
    return f"{count / seconds:.0f} incremental syncs/s", cpu() - start, count, "sync"


async def load_latency(target: SottoTarget, seconds: float, cpu: Cpu) -> Outcome:
    """The `latency` benchmark's loop: park a /sync, send, wait for the sync to answer."""
    async with new_session() as session:
        sender, listener = await make_users(target, session, "pl", 2)
        room_id = await room_with(sender, [listener])
        since = (await listener.sync(filter=SYNC_FILTER))["next_batch"]
        times: list[float] = []
        start = cpu()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            since, _, synced = await latency_round(sender, listener, room_id, since, "latency")
            times.append(synced)
        used = cpu() - start
    times.sort()
    p50, p99 = (1000 * times[int(q * (len(times) - 1))] for q in (0.5, 0.99))
    return f"{len(times)} sends, send -> sync p50 {p50:.2f} ms, p99 {p99:.2f} ms", used, len(times), "round"


async def load_federation(target: SottoTarget, seconds: float, cpu: Cpu) -> Outcome:
    """The `federation` scenario's burst: 10 senders on a second Sotto (on CPU 1), at most
    WINDOW messages in flight, a user of the profiled server listening in /sync."""
    assert target.ca is not None
    sender_server = SottoTarget(f"{target.name}-sender", target.dir.parent, cpus={1}, ca=target.ca)
    await sender_server.start()
    try:
        async with new_session() as session:
            start, sender_start = cpu(), cpu_seconds(sender_server.pids())
            settings = Settings.make(True)
            settings.fed_messages = max(200, int(seconds * 150))  # about `seconds` of burst
            result = await fed_pair(sender_server, target, session, settings)
            used, sender_used = cpu() - start, cpu_seconds(sender_server.pids()) - sender_start
    finally:
        await sender_server.stop()
    burst = result["throughput"]
    messages = burst["received"] + result["latency"]["n"]
    text = (
        f"{burst['received']} of {burst['sent']} messages, {burst['msgs_per_s']} msgs/s received, "
        f"latency p50 {result['latency']['p50_ms']:.1f} ms; receiver CPU "
        f"{burst['receiver_cpu_ms_per_msg']} ms per message in the burst alone; sender CPU "
        f"{1000 * sender_used / max(1, messages):.3f} ms per message"
    )
    return text, used, messages, "message"


def _service_port(target: SottoTarget) -> int:
    """The port in the registration's URL, where the receiver listens."""
    registration = yaml.safe_load(Path(target.extra_config["app_services"][0]).read_text())
    return int(registration["url"].rsplit(":", 1)[1])


async def load_appservice(target: SottoTarget, seconds: float, cpu: Cpu) -> Outcome:
    """`send` in a room an application service is in (its bot joined): every message is also
    pushed to the service, a bare receiver in this process (on CPU 1). Reports how many the
    service got and how long after the last send it had them all."""
    receiver = Receiver()
    async with receiver.running(_service_port(target)), new_session() as session:
        users = await make_users(target, session, "pa", 10)
        room_id = await room_with(users[0], users[1:])
        bot = Client(session, target.base_url, "", AS_TOKEN)
        await bot.call("POST", f"/join/{quote(room_id)}", {})
        start = cpu()
        rate, _, _ = await _drive([(u, room_id) for u in users], seconds, 0.0)
        sent_at = time.perf_counter()
        await users[0].send(room_id, "last")
        for _ in range(600):
            if receiver.bodies(room_id)[-1:] == ["last"]:
                break
            await asyncio.sleep(0.05)
        lag = time.perf_counter() - sent_at
        used = cpu() - start
    got = len(receiver.bodies(room_id))
    text = (
        f"{rate:.0f} msgs/s sent; the service got {got} in {len(receiver.transactions)} transactions, "
        f"all of them {1000 * lag:.0f} ms after the last send"
    )
    return text, used, got, "message"


LOADS: dict[str, Callable[[SottoTarget, float, Cpu], Awaitable[Outcome]]] = {
    "send": load_send,
    "rooms": load_rooms,
    "fanout": load_fanout,
    "sync": load_sync,
    "latency": load_latency,
    "federation": load_federation,
    "appservice": load_appservice,
}


def describe(outcome: Outcome) -> str:
    """The load's figures, and the server's CPU time per unit of work while it ran."""
    text, used, units, unit = outcome
    per = f"{1000 * used / units:.3f} ms" if units else "n/a"
    return f"{text}; server CPU {per} per {unit}"


async def main_async(
    name: str,
    seconds: float,
    database: str,
    sample: bool = True,
    federation: bool = False,
    tracing: float | None = None,
) -> None:
    if tracing is not None:
        # Spans of every request go to a receiver in this process, as to a collector.
        async with otlp_collector() as collector:
            settings = {
                "enabled": True,
                "endpoint": collector.url,
                "export_delay_ms": 1000,
                "sample_ratio": tracing,
            }
            await _run(name, seconds, database, sample, federation, {"tracing": settings})
        names = collections.Counter(span.name for span in collector.spans)
        print(f"tracing: {len(collector.spans)} spans received in {collector.exports} exports")
        for span_name, count in names.most_common(6):
            print(f"  {count:7d}  {span_name}")
        return
    await _run(name, seconds, database, sample, federation, {})


async def _run(
    name: str, seconds: float, database: str, sample: bool, federation: bool, extra: dict[str, Any]
) -> None:
    os.sched_setaffinity(0, {1})
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    workdir = REPO / "bench" / "work" / f"profile-{name}-{int(time.time())}"
    ca = make_ca(str(workdir / "ca")) if name == "federation" or federation else None
    if name == "appservice":
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        extra = {**extra, "app_services": [write_registration(str(workdir), port)]}
    target = SottoTarget(f"profile-{name}", workdir, database=database, cpus={0}, ca=ca, extra_config=extra)
    await target.start()
    server = psutil.Process(target.pids()[0])

    def cpu() -> float:
        times = server.cpu_times()
        return float(times.user + times.system)

    if not sample:
        try:
            print(f"{name} ({database}): {describe(await LOADS[name](target, seconds, cpu))}")
        finally:
            await target.stop()
        return
    stem = f"profile-{name}" + ("-pg" if database == "postgres" else "")
    raw = RESULTS / f"{stem}.collapsed"
    try:
        spy = await asyncio.create_subprocess_exec(
            *(py_spy, "record", "-p", str(target.pids()[0]), "-d", str(int(seconds) + 8)),
            *("-f", "raw", "-o", str(raw)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        outcome = describe(await LOADS[name](target, seconds, cpu))
        await asyncio.wait_for(spy.wait(), 60)
    finally:
        await target.stop()
    text = f"profile {name} ({database}): {outcome}\n\n" + summarise(raw)
    out = RESULTS / f"{stem}.txt"
    out.write_text(text + "\n")
    print(text[:6000])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("load", choices=sorted(LOADS))
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--no-sample", action="store_true", help="run the load without py-spy and print its rate only"
    )
    parser.add_argument(
        "--federation", action="store_true", help="the server has federation on (as deployments do)"
    )
    parser.add_argument(
        "--tracing",
        type=float,
        nargs="?",
        const=1.0,
        metavar="RATIO",
        help="the server sends traces (this share of them: 1 by default) to an OTLP receiver here",
    )
    args = parser.parse_args()
    sample = not args.no_sample
    run = main_async(
        args.load,
        args.seconds,
        args.database,
        sample=sample,
        federation=args.federation,
        tracing=args.tracing,
    )
    asyncio.run(run)


if __name__ == "__main__":
    main()
