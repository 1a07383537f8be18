"""Jump to a date in a room joined late: the client's `/timestamp_to_event` asks the other
servers when this server's history does not reach the date, and fetches what they name."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from tests.federation.support import CertAuthority, Client, federation_of, joined_pair
from tests.support.server import RunningServer


async def test_a_late_joiner_jumps_to_dates_before_its_join(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    history: list[tuple[str, int]] = []

    async def early_history(a: RunningServer, alice: Client, room_id: str) -> None:
        for body in ("first", "second", "third"):
            await asyncio.sleep(0.02)  # distinct milliseconds: the nearest event is unambiguous
            event_id = await alice.send(room_id, body)
            stored = await a.hs.events.get_event(event_id)
            assert stored is not None
            history.append((event_id, stored.event.origin_server_ts))
        await asyncio.sleep(0.02)

    # B joins without fetching any history: its timeline starts at bob's join.
    pair = joined_pair(test_ca, tmp_dirs, before_join=early_history, fetch_history=False)
    async with pair as (_a, b, _alice, bob, room_id):
        for event_id, _ in history:
            assert await b.hs.events.get_event(event_id) is None
        url = f"{b.base_url}/_matrix/client/v1/rooms/{quote(room_id)}/timestamp_to_event"

        async def nearest(ts: int, direction: str) -> tuple[int, dict[str, object]]:
            headers = {"Authorization": f"Bearer {bob.token}"}
            async with bob.session.get(
                url, params={"ts": str(ts), "dir": direction}, headers=headers
            ) as resp:
                return resp.status, await resp.json()

        # Backwards from just after "second": nothing here, A names "second", B fetches it.
        status, out = await nearest(history[1][1] + 1, "b")
        assert status == 200, out
        assert out == {"event_id": history[1][0], "origin_server_ts": history[1][1]}
        # Forwards from "first": B's history does not reach back that far; A names "first".
        status, out = await nearest(history[0][1], "f")
        assert status == 200, out
        assert out["event_id"] == history[0][0]
        # Both are now stored on B as history, and bob can read around them.
        context = await bob.call("GET", f"/rooms/{quote(room_id)}/context/{quote(history[0][0])}")
        assert context["event"]["content"]["body"] == "first"
        # Where B's own history suffices, nobody is asked (asking would fail).
        federation_of(b).timestamps.client = None  # type: ignore[assignment]
        status, out = await nearest(history[2][1] + 10_000_000, "b")
        assert status == 200, out
