"""Purging history in a room shared with another server: by default only the other
server's old messages go (they have copies there); the room goes on federating."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from tests.federation.support import CertAuthority, Client, joined_pair, room_bodies, wait_for


async def test_remote_messages_are_purged_by_default(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with joined_pair(test_ca, tmp_dirs) as (a, _b, alice, bob, room_id):
        await bob.send(room_id, "remote old")
        await wait_for(lambda: _has(alice, room_id, "remote old"), what="bob's message on A")
        await alice.send(room_id, "local old")
        cut = await alice.send(room_id, "cut")
        await wait_for(lambda: _has(bob, room_id, "cut"), what="the cut on B")
        await a.register("root", admin=True)
        token, _ = await a.hs.auth.create_session(f"@root:{a.server_name}", None, None)
        url = f"{a.base_url}/_synapse/admin/v1/purge_history/{quote(room_id)}/{quote(cut)}"
        headers = {"Authorization": f"Bearer {token}"}
        async with alice.session.post(url, json={}, headers=headers) as resp:
            purge_id = (await resp.json())["purge_id"]
        status_url = f"{a.base_url}/_synapse/admin/v1/purge_history_status/{purge_id}"
        for _ in range(100):
            async with alice.session.get(status_url, headers=headers) as resp:
                if (await resp.json())["status"] == "complete":
                    break
            await asyncio.sleep(0.05)
        here = await room_bodies(alice, room_id)
        assert "remote old" not in here and "local old" in here and "cut" in here
        assert "remote old" in await room_bodies(bob, room_id)  # B keeps its own
        # Both ways, the room goes on.
        await bob.send(room_id, "remote new")
        await wait_for(lambda: _has(alice, room_id, "remote new"), what="bob's new message on A")
        await alice.send(room_id, "local new")
        await wait_for(lambda: _has(bob, room_id, "local new"), what="alice's new message on B")


async def _has(client: Client, room_id: str, body: str) -> bool:
    return body in await room_bodies(client, room_id)
