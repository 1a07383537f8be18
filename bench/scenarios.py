"""Client-Server scenarios, run identically against every target.

Each scenario sets up its own users and rooms (not timed), then measures. Times are
taken on the load generator with `time.perf_counter()`; latencies are reported in
milliseconds, throughputs per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from bench.client import SYNC_FILTER, Client, gather_limited, percentiles, timeline_event_ids
from bench.targets import SottoTarget, Target, rss_bytes

_names = itertools.count()
T = TypeVar("T")


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}t{int(time.time() * 1000) % 10_000_000}"


@dataclass
class Settings:
    quick: bool
    latency_iterations: int
    throughput_seconds: float
    warmup_seconds: float
    sweep: list[int]
    sweep_seconds: float
    fanout_members: int
    fanout_messages: int
    memory_syncs: list[int]
    memory_syncs_synapse: list[int]
    fed_latency_iterations: int
    fed_messages: int
    join_state_events: int
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                quick=True,
                latency_iterations=200,
                throughput_seconds=4.0,
                warmup_seconds=1.0,
                sweep=[1, 4, 16, 64],
                sweep_seconds=2.0,
                fanout_members=200,
                fanout_messages=10,
                memory_syncs=[1_000, 10_000],
                memory_syncs_synapse=[1_000],
                fed_latency_iterations=30,
                fed_messages=200,
                join_state_events=2_000,
            )
        return cls(
            quick=False,
            latency_iterations=1_000,
            throughput_seconds=15.0,
            warmup_seconds=2.0,
            sweep=[1, 2, 4, 8, 16, 32, 64, 128],
            sweep_seconds=5.0,
            fanout_members=1_000,
            fanout_messages=30,
            memory_syncs=[1_000, 10_000],
            memory_syncs_synapse=[1_000, 10_000],
            fed_latency_iterations=200,
            fed_messages=1_000,
            join_state_events=10_000,
        )


async def make_users(target: Target, session: aiohttp.ClientSession, prefix: str, n: int) -> list[Client]:
    base = unique(prefix)

    async def one(i: int) -> Client:
        return await retrying(lambda: target.new_user(session, f"{base}_{i}"))

    return await gather_limited(n, 16, one)


async def room_with(owner: Client, members: list[Client], concurrency: int = 8) -> str:
    room_id = await owner.create_room()

    async def join(i: int) -> None:
        await retrying(lambda: members[i].join(room_id))

    await gather_limited(len(members), concurrency, join)
    return room_id


# 1. Sequential send -> sync latency ---------------------------------------------------------


async def latency(target: Target, session: aiohttp.ClientSession, s: Settings) -> dict[str, Any]:
    a, b = await make_users(target, session, "lat", 2)
    room_id = await room_with(a, [b])
    since = (await b.sync(filter=SYNC_FILTER))["next_batch"]
    end_to_end: list[float] = []
    send_only: list[float] = []
    warmup = 20
    for i in range(s.latency_iterations + warmup):
        since, sent, synced = await latency_round(a, b, room_id, since, f"latency {i}")
        if i >= warmup:
            end_to_end.append(synced)
            send_only.append(sent)
    return {"send_to_sync": percentiles(end_to_end), "send": percentiles(send_only)}


async def latency_round(
    a: Client, b: Client, room_id: str, since: str, body: str
) -> tuple[str, float, float]:
    """B parks a /sync; A sends. Returns B's next token, and the seconds from the send's
    start until its answer and until B's sync returned the event."""
    poll = asyncio.create_task(b.sync(since, 30_000, SYNC_FILTER))
    # Let the long-poll reach the server and park before the send starts.
    await asyncio.sleep(0.02)
    t0 = time.perf_counter()
    event_id = await a.send(room_id, body)
    t_sent = time.perf_counter()
    while True:
        result = await poll
        since = result["next_batch"]
        if event_id in timeline_event_ids(result, room_id):
            break
        poll = asyncio.create_task(b.sync(since, 30_000, SYNC_FILTER))
    return since, t_sent - t0, time.perf_counter() - t0


# 2. Throughput -------------------------------------------------------------------------------


async def _drive(
    senders: list[tuple[Client, str]], seconds: float, warmup: float
) -> tuple[float, list[float], int]:
    """Every sender sends back-to-back; count acknowledgements inside the measured window."""
    start = time.perf_counter()
    window_start = start + warmup
    end = window_start + seconds
    latencies: list[float] = []
    errors = 0
    acked = 0

    async def run(client: Client, room_id: str) -> None:
        nonlocal errors, acked
        i = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                await client.send(room_id, f"load {i}")
            except Exception:
                errors += 1
                await asyncio.sleep(0.01)
                continue
            t1 = time.perf_counter()
            if window_start <= t1 <= end:
                acked += 1
                latencies.append(t1 - t0)
            i += 1

    await asyncio.gather(*(run(c, r) for c, r in senders))
    return acked / seconds, latencies, errors


async def rooms_of_two(users: list[Client]) -> list[tuple[Client, str]]:
    """A room per pair of users; both of each pair send in it: (sender, room) pairs."""
    senders: list[tuple[Client, str]] = []
    for a, b in zip(users[::2], users[1::2], strict=True):
        room = await room_with(a, [b])
        senders += [(a, room), (b, room)]
    return senders


async def throughput(target: Target, session: aiohttp.ClientSession, s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # 10 senders in one room.
    users = await make_users(target, session, "one", 10)
    room_id = await room_with(users[0], users[1:])
    rate, lat, errors = await _drive([(u, room_id) for u in users], s.throughput_seconds, s.warmup_seconds)
    out["one_room_10_senders"] = {"msgs_per_s": round(rate, 1), "latency": percentiles(lat), "errors": errors}
    # 10 rooms of 2 users, both sending.
    senders = await rooms_of_two(await make_users(target, session, "pair", 20))
    rate, lat, errors = await _drive(senders, s.throughput_seconds, s.warmup_seconds)
    out["ten_rooms_of_2"] = {"msgs_per_s": round(rate, 1), "latency": percentiles(lat), "errors": errors}
    return out


async def sweep(target: Target, session: aiohttp.ClientSession, s: Settings) -> dict[str, Any]:
    """Latency against throughput: c senders, each in a room of its own, for growing c."""
    top = max(s.sweep)
    users = await make_users(target, session, "sw", top)
    rooms = [await u.create_room() for u in users]
    points = []
    for c in s.sweep:
        rate, lat, errors = await _drive(list(zip(users[:c], rooms[:c], strict=True)), s.sweep_seconds, 0.5)
        points.append(
            {"senders": c, "msgs_per_s": round(rate, 1), "latency": percentiles(lat), "errors": errors}
        )
    return {"points": points}


async def ceiling(target: Target, session: aiohttp.ClientSession, s: Settings) -> dict[str, Any]:
    """The bare handler under the same 10-sender load as `throughput`, plus the sweep."""
    users = [await target.new_user(session, f"bare{i}") for i in range(max(s.sweep))]
    # Untimed, one send per sender first: registering users and making rooms warm up a
    # homeserver (connections, first requests), and nothing had reached the bare handler
    # yet. A cold first request once took longer than the smoke test's whole window.
    await asyncio.gather(*(u.send("!r:bare", "warm-up") for u in users[:10]))
    rate, lat, errors = await _drive(
        [(u, "!r:bare") for u in users[:10]], s.throughput_seconds, s.warmup_seconds
    )
    points = []
    for c in s.sweep:
        r, lt, e = await _drive([(u, "!r:bare") for u in users[:c]], s.sweep_seconds, 0.5)
        points.append({"senders": c, "msgs_per_s": round(r, 1), "latency": percentiles(lt), "errors": e})
    return {
        "ten_senders": {"msgs_per_s": round(rate, 1), "latency": percentiles(lat), "errors": errors},
        "points": points,
    }


# 2c. Fan-out to a big room ------------------------------------------------------------------


async def fanout(target: Target, session: aiohttp.ClientSession, s: Settings) -> dict[str, Any]:
    sender, *members = await make_users(target, session, "fan", s.fanout_members + 1)
    room_id = await sender.create_room()
    t_join = time.perf_counter()

    async def join(i: int) -> None:
        await members[i].join(room_id)

    await gather_limited(len(members), 8, join)
    join_seconds = time.perf_counter() - t_join
    arrivals: dict[str, list[float]] = defaultdict(list)
    everyone: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
    stop = asyncio.Event()
    failures = 0

    ready = 0
    all_ready = asyncio.Event()

    async def listen(member: Client) -> None:
        nonlocal failures, ready
        since = (await retrying(lambda: member.sync(filter=SYNC_FILTER)))["next_batch"]
        ready += 1
        if ready == len(members):
            all_ready.set()
        while not stop.is_set():
            try:
                result = await member.sync(since, 60_000, SYNC_FILTER)
            except Exception:
                failures += 1
                await asyncio.sleep(0.1)
                continue
            now = time.perf_counter()
            since = result["next_batch"]
            for event_id in timeline_event_ids(result, room_id):
                arrivals[event_id].append(now)
                if len(arrivals[event_id]) == len(members):
                    everyone[event_id].set()

    listeners = [asyncio.create_task(listen(m)) for m in members]
    # Every member's initial sync is done (untimed), then a moment for the long-polls to park.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_ready.wait(), 300)
    await asyncio.sleep(2.0 + len(members) / 500)
    complete: list[float] = []
    deliveries: list[float] = []
    missing = 0
    t_all = time.perf_counter()
    for i in range(s.fanout_messages):
        t0 = time.perf_counter()
        event_id = await sender.send(room_id, f"fanout {i}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everyone[event_id].wait(), 30)
        got = arrivals[event_id]
        missing += len(members) - len(got)
        if got:
            complete.append(max(got) - t0)
            deliveries.extend(t - t0 for t in got)
    total = time.perf_counter() - t_all
    stop.set()
    for task in listeners:
        task.cancel()
    await asyncio.gather(*listeners, return_exceptions=True)
    return {
        "members": len(members),
        "messages": s.fanout_messages,
        "join_seconds": round(join_seconds, 2),
        "all_delivered": percentiles(complete),
        "each_delivery": percentiles(deliveries),
        "deliveries_per_s": round(len(deliveries) / total, 1) if total else 0,
        "missing": missing,
        "sync_errors": failures,
    }


# 3. Memory -------------------------------------------------------------------------------


async def _settle_rss(target: Target) -> int:
    gc.collect()
    await asyncio.sleep(2.0)
    return rss_bytes(target.pids())


async def memory(target: Target, session: aiohttp.ClientSession, s: Settings) -> dict[str, Any]:
    counts = s.memory_syncs if target.kind != "synapse" else s.memory_syncs_synapse
    out: dict[str, Any] = {"idle_rss_bytes": await _settle_rss(target)}
    if isinstance(target, SottoTarget) and target.supervisor_pid():
        out["supervisor_rss_bytes"] = rss_bytes([target.supervisor_pid() or 0])
    top = max(counts)
    users = await make_users(target, session, "mem", top)
    tokens = [""] * top
    await gather_limited(top, 32, lambda i: _first_sync(users, tokens, i))
    before = await _settle_rss(target)
    out["before_syncs_rss_bytes"] = before
    polls: list[asyncio.Task[Any]] = []
    levels = []
    for n in sorted(counts):
        for i in range(len(polls), n):
            polls.append(asyncio.create_task(users[i].sync(tokens[i], 240_000, SYNC_FILTER)))
            if i % 500 == 499:
                await asyncio.sleep(0.05)
        await asyncio.sleep(3.0 + n / 2_000)
        rss = await _settle_rss(target)
        finished = sum(1 for p in polls if p.done())
        levels.append(
            {
                "syncs": n,
                "rss_bytes": rss,
                "per_sync_bytes": round((rss - before) / n),
                "finished_early": finished,
            }
        )
    for p in polls:
        p.cancel()
    await asyncio.gather(*polls, return_exceptions=True)
    out["levels"] = levels
    return out


async def _first_sync(users: list[Client], tokens: list[str], i: int) -> None:
    tokens[i] = (await retrying(lambda: users[i].sync(filter=SYNC_FILTER)))["next_batch"]


async def retrying(call: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """Setup requests (not measured) are retried: an overloaded server may answer 500 or 503."""
    for attempt in range(attempts):
        try:
            return await call()
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")
