"""An erased user's events go pruned to other servers in the history they fetch (backfill,
missing events, single events), as Synapse sends them: the other server finds the content hash wrong and
keeps the pruned form, as for a redaction it missed."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.federation.support import CertAuthority, Client, federation_of, joined_pair
from tests.support.server import RunningServer

SECRET = "dave's secret"


async def erase(srv: RunningServer, session: Any, user_id: str) -> None:
    admin_id = await srv.register("admin", admin=True)
    token, _ = await srv.hs.auth.create_session(admin_id, None, None)
    url = f"{srv.base_url}/_synapse/admin/v1/deactivate/{quote(user_id)}"
    async with session.post(url, json={"erase": True}, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200, await resp.text()


def by_body(pdus: list[dict[str, Any]], sender: str) -> list[dict[str, Any]]:
    return [p for p in pdus if p["type"] == "m.room.message" and p["sender"] == sender]


async def test_backfill_and_missing_events_carry_erased_users_events_pruned(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    said: dict[str, str] = {}

    async def before_join(a: RunningServer, alice: Client, room_id: str) -> None:
        dave = await Client.login(a, "dave", alice.session)
        await dave.join(room_id)
        said["dave"] = await dave.send(room_id, SECRET)
        said["alice"] = await alice.send(room_id, "alice's words")
        said["dave_id"] = dave.user_id
        await erase(a, alice.session, dave.user_id)

    async with joined_pair(test_ca, tmp_dirs, before_join=before_join) as (a, b, alice, bob, room_id):
        dave_id = said["dave_id"]
        # B fetched the room's history when bob joined: dave's message came pruned.
        history = {e["event_id"]: e for e in await bob.messages(room_id)}
        assert history[said["dave"]]["content"] == {}
        assert history[said["alice"]]["content"]["body"] == "alice's words"

        # The endpoints themselves, asked by B.
        client = federation_of(b).client
        extremities, _ = await a.hs.events.get_extremities_and_depth(room_id)
        backfill = await client.get(
            a.server_name,
            f"/_matrix/federation/v1/backfill/{quote(room_id, safe='')}",
            query=[("v", e) for e in extremities] + [("limit", "50")],
        )
        [dave_pdu] = by_body(backfill["pdus"], dave_id)
        assert dave_pdu["content"] == {} and "hashes" in dave_pdu and "signatures" in dave_pdu
        assert [p["content"]["body"] for p in by_body(backfill["pdus"], alice.user_id)] == ["alice's words"]
        # Dave's member events too: no display name left in them.
        members = [p for p in backfill["pdus"] if p["type"] == "m.room.member" and p["state_key"] == dave_id]
        assert members and all(set(p["content"]) == {"membership"} for p in members)

        missing = await client.post(
            a.server_name,
            f"/_matrix/federation/v1/get_missing_events/{quote(room_id, safe='')}",
            {"earliest_events": [], "latest_events": extremities, "limit": 20, "min_depth": 0},
        )
        [dave_pdu] = by_body(missing["events"], dave_id)
        assert dave_pdu["content"] == {}
        assert [p["content"]["body"] for p in by_body(missing["events"], alice.user_id)] == ["alice's words"]

        # Nor can it be fetched whole on its own.
        single = await client.get(
            a.server_name, f"/_matrix/federation/v1/event/{quote(said['dave'], safe='')}"
        )
        assert [p["content"] for p in single["pdus"]] == [{}]
        alices = await client.get(
            a.server_name, f"/_matrix/federation/v1/event/{quote(said['alice'], safe='')}"
        )
        assert alices["pdus"][0]["content"]["body"] == "alice's words"

        # A's own clients that were in the room then still read it whole.
        history = {e["event_id"]: e for e in await alice.messages(room_id)}
        assert history[said["dave"]]["content"]["body"] == SECRET
