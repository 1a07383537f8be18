"""Sliding sync (MSC4186) against /sync v3 for a user in many rooms (in process, SQLite):
the time of an initial request, and of one round (a message lands in one of the rooms; the
user's long-poll answers with it), for rooms already in the sliding window ("hot") and for
rooms entering it (sent whole the first time).

python -m bench.sliding [--rooms 300] [--rounds 50]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from typing import Any

import aiohttp

from tests.support.http import RawClient
from tests.support.server import run_server

PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
# As Element X asks: a window of the 20 most recent rooms, with the state a room list needs.
LIST = {
    "ranges": [[0, 19]],
    "timeline_limit": 1,
    "required_state": [["m.room.name", ""], ["m.room.avatar", ""], ["m.room.encryption", ""]],
    "filters": {"not_room_types": ["m.space"]},
}
V3_FILTER = '{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}'


async def _sliding(alice: RawClient, pos: str | None, timeout: int) -> dict[str, Any]:
    params = {"timeout": str(timeout), **({"pos": pos} if pos else {})}
    return dict(await alice.ok("POST", PATH, json={"lists": {"all": LIST}}, params=params))


async def measure(rooms: int, rounds: int) -> dict[str, float]:
    async with (
        run_server(tempfile.mkdtemp(prefix="sotto-sliding-")) as srv,
        aiohttp.ClientSession() as http,
    ):

        async def user(name: str) -> RawClient:
            user_id = await srv.register(name)
            token, _ = await srv.hs.auth.create_session(user_id, None, None)
            return RawClient(http, srv.base_url, token, user_id)

        alice, bob = await user("alice"), await user("bob")
        ids = [await bob.room_with(alice, name=f"room {i}") for i in range(rooms)]
        out: dict[str, float] = {}

        start = time.perf_counter()
        first = await _sliding(alice, None, 0)
        out["sliding initial"] = time.perf_counter() - start
        start = time.perf_counter()
        v3 = await alice.sync(filter=V3_FILTER)
        out["v3 initial"] = time.perf_counter() - start

        tokens = {"sliding": first["pos"], "v3": v3["next_batch"]}
        sent = [0]

        async def rounds_of(kind: str, targets: list[str]) -> float:
            token = tokens[kind]
            total = 0.0
            for i in range(rounds):
                room = targets[(i * 7) % len(targets)]
                if kind == "sliding":
                    waiting = asyncio.ensure_future(_sliding(alice, token, 30_000))
                else:
                    waiting = asyncio.ensure_future(alice.sync(token, 30_000, filter=V3_FILTER))
                for _ in range(1000):  # until the long-poll is parked, waiting
                    await asyncio.sleep(0.001)
                    if srv.hs.notifier.waiting:
                        break
                start = time.perf_counter()
                sent[0] += 1  # a fresh transaction ID per message (a repeated one is deduplicated)
                await bob.send(room, f"m{i}", f"t{sent[0]}")
                answer = await waiting
                total += time.perf_counter() - start
                token = answer["pos"] if kind == "sliding" else answer["next_batch"]
            tokens[kind] = token
            return total / rounds

        hot = ids[-20:]  # the most recently created: the window's rooms
        cold = ids[:-20]
        await rounds_of("sliding", hot)  # warm-up: the first rounds after start are slower
        for kind in ("sliding", "v3"):
            out[f"{kind} round, room in the window"] = await rounds_of(kind, hot)
        for kind in ("sliding", "v3"):
            out[f"{kind} round, room entering the window"] = await rounds_of(kind, cold)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.rooms, args.rounds))
    print(f"user in {args.rooms} rooms:")
    for name, seconds in figures.items():
        print(f"  {name}: {1000 * seconds:.1f} ms")


if __name__ == "__main__":
    main()
