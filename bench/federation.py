"""Federation scenarios: two servers on loopback with TLS from one throwaway CA.

- `federation`: for each pair (Sotto or Synapse sending to Sotto or Synapse), a user on
  the sender creates a room, a user on the receiver joins it over federation, then we
  measure send → remote /sync latency (one message at a time) and throughput (messages
  sent by 10 senders, with at most `WINDOW` sent and not yet seen by the remote /sync,
  until the last one arrives).
- `join_state`: a Sotto server hosts a room with many state events; a fresh Sotto, and a
  fresh Synapse, each join it over federation: time to join and peak memory growth.

The two servers of a pair run on different cores (the load generator is mostly idle here).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.client import BURST_SYNC_FILTER, SYNC_FILTER, Client, new_session, percentiles, timeline_event_ids
from bench.scenarios import Settings, unique
from bench.targets import SottoTarget, SynapseTarget, Target, cpu_seconds, peak_rss_bytes, rss_bytes
from tests.federation.support import CertAuthority

FEDERATION_SCENARIOS = ("federation", "join_state")
PAIRS = [("sotto", "sotto"), ("sotto", "synapse"), ("synapse", "sotto"), ("synapse", "synapse")]
# Burst messages sent and not yet seen by the receiver, at most. The throughput measured is
# what the pair sustains, not how fast a sender fills a queue: Synapse prunes its inbound
# queue for a room once 100 events are staged (keeping the newest and leaving the rest to
# backfill), so an unbounded burst measured its pruning (174 of 1,000 seen in /sync).
WINDOW = 80
# The burst stops here even if the receiver stalls.
BURST_DEADLINE_S = 300

Record = Callable[[str, str, dict[str, Any]], None]


def _server(kind: str, name: str, workdir: Path, ca: CertAuthority, cpu: int) -> Target:
    if kind == "sotto":
        return SottoTarget(name, workdir, cpus={cpu}, ca=ca)
    return SynapseTarget(name, workdir, cpus={cpu}, ca=ca)


async def _wait_joined(client: Client, room_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sync = await client.sync(filter=SYNC_FILTER)
        if room_id in sync.get("rooms", {}).get("join", {}):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("remote join did not show up in /sync")


async def fed_pair(a: Target, b: Target, session: aiohttp.ClientSession, s: Settings) -> dict[str, Any]:
    sender = await a.new_user(session, unique("fs"))
    receiver = await b.new_user(session, unique("fr"))
    room_id = await sender.create_room()
    await receiver.join(room_id, via=[a.server_name])
    await _wait_joined(receiver, room_id)
    # The sender's server must also see the join before it sends to the receiver's server.
    await asyncio.sleep(1.0)
    since = (await receiver.sync(filter=SYNC_FILTER))["next_batch"]

    # Latency, one message at a time.
    latencies: list[float] = []
    for i in range(s.fed_latency_iterations + 5):
        poll = asyncio.create_task(receiver.sync(since, 30_000, SYNC_FILTER))
        await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        event_id = await sender.send(room_id, f"fed latency {i}")
        deadline = t0 + 30
        while True:
            result = await poll
            since = result["next_batch"]
            if event_id in timeline_event_ids(result, room_id) or time.perf_counter() > deadline:
                break
            poll = asyncio.create_task(receiver.sync(since, 30_000, SYNC_FILTER))
        if i >= 5:
            latencies.append(time.perf_counter() - t0)

    # Throughput: 10 senders, at most WINDOW messages in flight; the clock stops when the last
    # one arrives. Only burst messages are sent meanwhile, so every arrival is one of them.
    arrived: dict[str, float] = {}
    done = asyncio.Event()
    progress = asyncio.Event()
    wanted: set[str] = set()
    all_sent = False
    issued = 0

    errors: list[str] = []

    async def listen() -> None:
        nonlocal since
        while not done.is_set():
            try:
                result = await receiver.sync(since, 30_000, BURST_SYNC_FILTER)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {str(e)[:100]}")
                await asyncio.sleep(0.2)
                continue
            since = result["next_batch"]
            now = time.perf_counter()
            for event_id in timeline_event_ids(result, room_id):
                arrived.setdefault(event_id, now)
            progress.set()
            if all_sent and wanted <= arrived.keys():
                done.set()

    listener = asyncio.create_task(listen())
    # The receiver's CPU for the phase (its /sync answers to the listener included).
    cpu_start = cpu_seconds(b.pids())
    t_start = time.perf_counter()
    counter = iter(range(s.fed_messages))

    deadline = t_start + BURST_DEADLINE_S

    async def send_loop() -> None:
        nonlocal issued
        for i in counter:
            while issued - len(arrived) >= WINDOW and time.perf_counter() < deadline:
                progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(progress.wait(), 1.0)
            if time.perf_counter() >= deadline:
                return
            issued += 1
            wanted.add(await sender.send(room_id, f"fed burst {i}"))

    await asyncio.gather(*(send_loop() for _ in range(10)))
    t_sent = time.perf_counter()
    all_sent = True
    if wanted <= arrived.keys():
        done.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), max(1.0, deadline - time.perf_counter()))
    done.set()
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await listener
    receiver_cpu = cpu_seconds(b.pids()) - cpu_start
    got = [arrived[e] for e in wanted if e in arrived]
    last = max(got) if got else time.perf_counter()
    return {
        "latency": percentiles(latencies),
        "throughput": {
            "messages": s.fed_messages,
            "sent": len(wanted),
            "window": WINDOW,
            "received": len(got),
            "receiver_cpu_ms_per_msg": round(1000 * receiver_cpu / len(got), 2) if got else None,
            "msgs_per_s": round(len(got) / (last - t_start), 1) if got else 0,
            "send_msgs_per_s": round(s.fed_messages / (t_sent - t_start), 1),
            "receiver_sync_errors": errors[:5],
        },
    }


async def join_state(
    host: Target, joiner: Target, room_id: str, state_events: int, session: aiohttp.ClientSession
) -> dict[str, Any]:
    user = await joiner.new_user(session, unique("j"))
    pid = joiner.pids()[0]
    await asyncio.sleep(1.0)
    before = rss_bytes([pid])
    t0 = time.perf_counter()
    async with new_session(timeout_s=1800) as long_session:
        await Client(long_session, user.base_url, user.user_id, user.token).join(
            room_id, via=[host.server_name]
        )
    seconds = time.perf_counter() - t0
    await asyncio.sleep(1.0)
    peak = peak_rss_bytes(pid)
    return {
        "state_events": state_events,
        "join_seconds": round(seconds, 2),
        "rss_before_bytes": before,
        "peak_rss_bytes": peak,
        "peak_growth_bytes": max(0, peak - before),
        "rss_after_bytes": rss_bytes([pid]),
    }


async def _fill_room(owner: Client, room_id: str, count: int) -> None:
    it = iter(range(count))

    async def worker() -> None:
        for i in it:
            await owner.put_state(room_id, "org.sotto.bench.state", f"k{i}", {"i": i, "pad": "x" * 32})

    await asyncio.gather(*(worker() for _ in range(4)))


async def run_federation(
    record: Record,
    descriptions: dict[str, str],
    workdir: Path,
    s: Settings,
    ca: CertAuthority,
    only: set[str],
    cpu: int,
) -> None:
    async with new_session() as session:
        if "federation" in only:
            for sender_kind, receiver_kind in PAIRS:
                pair = f"{sender_kind} → {receiver_kind}"
                a = _server(sender_kind, f"fed-a-{sender_kind}-{receiver_kind}", workdir, ca, cpu)
                b = _server(receiver_kind, f"fed-b-{sender_kind}-{receiver_kind}", workdir, ca, 1 - cpu)
                print(f"== federation {pair}", flush=True)
                try:
                    await asyncio.gather(a.start(), b.start())
                    result = await fed_pair(a, b, session, s)
                except Exception as e:
                    result = {"error": f"{type(e).__name__}: {e}"}
                finally:
                    await asyncio.gather(a.stop(), b.stop(), return_exceptions=True)
                print(f"   {result}", flush=True)
                record("federation", pair, result)
        if "join_state" in only:
            host = SottoTarget("join-host", workdir, cpus={1 - cpu}, ca=ca)
            await host.start()
            try:
                owner = await host.new_user(session, unique("host"))
                room_id = await owner.create_room()
                t0 = time.perf_counter()
                await _fill_room(owner, room_id, s.join_state_events)
                print(f"== join_state: {s.join_state_events} state events in {time.perf_counter() - t0:.1f}s")
                for kind in ("sotto", "synapse"):
                    joiner = _server(kind, f"joiner-{kind}", workdir, ca, cpu)
                    descriptions[f"joiner-{kind}"] = joiner.describe()
                    try:
                        await joiner.start()
                        result = await join_state(host, joiner, room_id, s.join_state_events, session)
                    except Exception as e:
                        result = {"error": f"{type(e).__name__}: {e}"}
                    finally:
                        await joiner.stop()
                    print(f"   {kind} joins: {result}", flush=True)
                    record("join_state", f"{kind} joins a Sotto room", result)
            finally:
                await host.stop()
