"""Time of one `publicRooms` page against a server publishing N rooms (in process, SQLite).

python -m bench.directory [--rooms 300] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import aiohttp

from tests.support.http import RawClient
from tests.support.server import run_server


async def measure(rooms: int, rounds: int) -> float:
    async with (
        run_server(tempfile.mkdtemp(prefix="sotto-directory-")) as srv,
        aiohttp.ClientSession() as http,
    ):
        user_id = await srv.register("alice")
        token, _ = await srv.hs.auth.create_session(user_id, None, None)
        alice = RawClient(http, srv.base_url, token, user_id)
        for i in range(rooms):
            await alice.create_room(preset="public_chat", visibility="public", name=f"room {i}", topic="t")
        await alice.ok("GET", "/publicRooms")
        start = time.perf_counter()
        for _ in range(rounds):
            await alice.ok("GET", "/publicRooms", params={"limit": "20"})
        return (time.perf_counter() - start) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    seconds = asyncio.run(measure(args.rooms, args.rounds))
    print(f"{args.rooms} public rooms: {1000 * seconds:.1f} ms per publicRooms page")


if __name__ == "__main__":
    main()
