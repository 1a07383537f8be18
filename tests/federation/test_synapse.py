"""Sotto against a real Synapse (pinned, installed on first use), in room versions 11 and 12."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    room_bodies,
    wait_for,
)
from tests.federation.synapse import SynapseServer

# The first Synapse fixture may install Synapse into its own virtualenv (a minute or two).
pytestmark = pytest.mark.timeout(900)


def synapse_client(synapse: SynapseServer, localpart: str, http: aiohttp.ClientSession) -> Client:
    login = synapse.register(localpart)
    return Client(synapse.base_url, login["user_id"], login["access_token"], http)


@pytest.mark.parametrize("version", ["11", "12"])
async def test_sotto_user_joins_synapse_room(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str], version: str
) -> None:
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        syn = synapse_client(synapse, f"carol{version}", http)
        dave = await Client.login(sotto, "dave", http)
        room_id = await syn.create_room(preset="public_chat", room_version=version)
        await syn.send(room_id, "synapse says hi")
        await dave.join(room_id, via=[synapse.server_name])
        await wait_for(lambda: _member_joined(syn, room_id, dave.user_id), what="dave joined on Synapse")
        await dave.send(room_id, "sotto says hi")
        await wait_for(lambda: _has(syn, room_id, "sotto says hi"), what="Sotto message on Synapse")
        await syn.send(room_id, "synapse replies")
        await wait_for(lambda: _has(dave, room_id, "synapse replies"), what="Synapse message on Sotto")


@pytest.mark.parametrize("version", ["11", "12"])
async def test_synapse_user_joins_sotto_room(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str], version: str
) -> None:
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        syn = synapse_client(synapse, f"erin{version}", http)
        frank = await Client.login(sotto, "frank", http)
        room_id = await frank.create_room(preset="public_chat", room_version=version)
        await frank.send(room_id, "sotto room opens")
        await syn.join(room_id, via=[sotto.server_name])
        await wait_for(
            lambda: _joined_locally(sotto, room_id, syn.user_id), what="Synapse user joined on Sotto"
        )
        await syn.send(room_id, "synapse in sotto room")
        await wait_for(lambda: _has(frank, room_id, "synapse in sotto room"), what="Synapse message on Sotto")
        await frank.send(room_id, "welcome")
        await wait_for(lambda: _has(syn, room_id, "welcome"), what="Sotto message on Synapse")


async def _has(client: Client, room_id: str, body: str) -> bool:
    return body in await room_bodies(client, room_id)


async def _member_joined(client: Client, room_id: str, user_id: str) -> bool:
    data = await client.call("GET", f"/rooms/{room_id}/joined_members")
    return user_id in data.get("joined", {})


async def _joined_locally(srv: object, room_id: str, user_id: str) -> bool:
    membership = await srv.hs.events.get_membership(room_id, user_id)  # type: ignore[attr-defined]
    return membership is not None and membership[0] == "join"


async def _ephemeral_seen(client: Client, room_id: str, edu_type: str, predicate: object) -> bool:
    data = await client.sync(timeout_ms=500)
    room = data["rooms"]["join"].get(room_id, {})
    for edu in room.get("ephemeral", {}).get("events", []):
        if edu["type"] == edu_type and predicate(edu["content"]):  # type: ignore[operator]
            return True
    return False


async def _event(client: Client, room_id: str, event_id: str) -> dict[str, object] | None:
    for e in await client.messages(room_id):
        if e["event_id"] == event_id:
            return e
    return None


@pytest.mark.parametrize("version", ["11", "12"])
async def test_edits_redactions_typing_receipts_with_synapse(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str], version: str
) -> None:
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        syn = synapse_client(synapse, f"gina{version}", http)
        hank = await Client.login(sotto, "hank", http)
        room_id = await syn.create_room(preset="public_chat", room_version=version)
        await hank.join(room_id, via=[synapse.server_name])
        await wait_for(lambda: _member_joined(syn, room_id, hank.user_id), what="hank joined on Synapse")
        await syn.sync()
        await hank.sync()

        # Edits both ways.
        original = await hank.send(room_id, "typo")
        edit = {
            "msgtype": "m.text",
            "body": "* fixed",
            "m.new_content": {"msgtype": "m.text", "body": "fixed"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        }
        edit_id = await hank.send(room_id, edit)
        seen = await wait_for(lambda: _event(syn, room_id, edit_id), what="Sotto edit on Synapse")
        assert seen["content"]["m.relates_to"]["event_id"] == original
        syn_original = await syn.send(room_id, "synapse typo")
        edit["m.relates_to"] = {"rel_type": "m.replace", "event_id": syn_original}
        syn_edit = await syn.send(room_id, edit)
        await wait_for(lambda: _event(hank, room_id, syn_edit), what="Synapse edit on Sotto")

        # Redactions both ways.
        secret = await hank.send(room_id, "sotto secret")
        await wait_for(lambda: _event(syn, room_id, secret), what="message on Synapse")
        await hank.call("PUT", f"/rooms/{room_id}/redact/{secret}/r1", {"reason": "oops"})
        await wait_for(lambda: _redacted(syn, room_id, secret), what="Sotto redaction applied on Synapse")
        syn_secret = await syn.send(room_id, "synapse secret")
        await wait_for(lambda: _event(hank, room_id, syn_secret), what="Synapse message on Sotto")
        await syn.call("PUT", f"/rooms/{room_id}/redact/{syn_secret}/r2", {})
        await wait_for(
            lambda: _redacted(hank, room_id, syn_secret), what="Synapse redaction applied on Sotto"
        )

        # Typing both ways.
        await hank.call("PUT", f"/rooms/{room_id}/typing/{hank.user_id}", {"typing": True, "timeout": 20000})
        await wait_for(
            lambda: _ephemeral_seen(syn, room_id, "m.typing", lambda c: hank.user_id in c["user_ids"]),
            what="Sotto typing on Synapse",
        )
        await syn.call("PUT", f"/rooms/{room_id}/typing/{syn.user_id}", {"typing": True, "timeout": 20000})
        await wait_for(
            lambda: _ephemeral_seen(hank, room_id, "m.typing", lambda c: syn.user_id in c["user_ids"]),
            what="Synapse typing on Sotto",
        )

        # Read receipts both ways.
        last = await syn.send(room_id, "read me")
        await wait_for(lambda: _event(hank, room_id, last), what="message to read on Sotto")
        await hank.call("POST", f"/rooms/{room_id}/receipt/m.read/{last}", {})
        await wait_for(
            lambda: _ephemeral_seen(syn, room_id, "m.receipt", lambda c: hank.user_id in str(c.get(last))),
            what="Sotto receipt on Synapse",
        )
        mine = await hank.send(room_id, "read mine")
        await wait_for(lambda: _event(syn, room_id, mine), what="message to read on Synapse")
        await syn.call("POST", f"/rooms/{room_id}/receipt/m.read/{mine}", {})
        await wait_for(
            lambda: _ephemeral_seen(hank, room_id, "m.receipt", lambda c: syn.user_id in str(c.get(mine))),
            what="Synapse receipt on Sotto",
        )


async def _redacted(client: Client, room_id: str, event_id: str) -> bool:
    event = await _event(client, room_id, event_id)
    return event is not None and not event.get("content") and "redacted_because" in event.get("unsigned", {})  # type: ignore[operator]


async def _upload(client: Client, http: aiohttp.ClientSession, data: bytes) -> str:
    async with http.post(
        f"{client.base_url}/_matrix/media/v3/upload",
        params={"filename": "x.bin"},
        data=data,
        headers={"Authorization": f"Bearer {client.token}", "Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["content_uri"])


async def _download(client: Client, http: aiohttp.ClientSession, mxc: str) -> bytes:
    server_name, media_id = mxc.removeprefix("mxc://").split("/", 1)
    url = f"{client.base_url}/_matrix/client/v1/media/download/{server_name}/{media_id}"
    async with http.get(url, headers={"Authorization": f"Bearer {client.token}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def test_media_both_ways_with_synapse(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str]
) -> None:
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        syn = synapse_client(synapse, "media_user", http)
        local = await Client.login(sotto, "media_local", http)
        from_sotto = b"sotto bytes " * 500
        from_synapse = b"synapse bytes " * 500
        assert await _download(syn, http, await _upload(local, http, from_sotto)) == from_sotto
        assert await _download(local, http, await _upload(syn, http, from_synapse)) == from_synapse


async def test_space_hierarchy_both_ways_with_synapse(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str]
) -> None:
    """Each server's space holds a room of the other: each walks it over federation."""
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        syn = synapse_client(synapse, "hana", http)
        ivan = await Client.login(sotto, "ivan", http)
        space_type = {"creation_content": {"type": "m.space"}}
        syn_room = await syn.create_room(preset="public_chat", name="Synapse room")
        sotto_room = await ivan.create_room(preset="public_chat", name="Sotto room")
        sotto_space = await ivan.create_room(preset="public_chat", name="Sotto space", **space_type)
        syn_space = await syn.create_room(preset="public_chat", name="Synapse space", **space_type)
        await ivan.state(sotto_space, "m.space.child", {"via": [synapse.server_name]}, state_key=syn_room)
        await syn.state(syn_space, "m.space.child", {"via": [sotto.server_name]}, state_key=sotto_room)

        seen_by_sotto = {r["room_id"]: r for r in await ivan.hierarchy(sotto_space)}
        assert set(seen_by_sotto) == {sotto_space, syn_room}
        assert seen_by_sotto[syn_room]["name"] == "Synapse room"
        seen_by_synapse = {r["room_id"]: r for r in await syn.hierarchy(syn_space)}
        assert set(seen_by_synapse) == {syn_space, sotto_room}
        assert seen_by_synapse[sotto_room]["name"] == "Sotto room"
        assert seen_by_synapse[sotto_room]["num_joined_members"] == 1



async def test_synapse_jumps_to_a_date_in_sottos_history(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str]
) -> None:
    """Synapse joins late and has none of the room's early history: its /timestamp_to_event
    asks Sotto (GET /_matrix/federation/v1/timestamp_to_event)."""
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        jo = await Client.login(sotto, "jo", http)
        room_id = await jo.create_room(preset="public_chat")
        first = await jo.send(room_id, "the very first message")
        stored = await sotto.hs.events.get_event(first)
        assert stored is not None
        for i in range(70):
            await jo.send(room_id, f"filler {i}")
        syn = synapse_client(synapse, "kim", http)
        await syn.join(room_id, via=[sotto.server_name])
        url = f"{syn.base_url}/_matrix/client/v1/rooms/{room_id}/timestamp_to_event"
        params = {"ts": str(stored.event.origin_server_ts), "dir": "f"}
        async with http.get(url, params=params, headers={"Authorization": f"Bearer {syn.token}"}) as resp:
            body = await resp.json()
        assert resp.status == 200, body
        assert body["event_id"] == first


async def test_sotto_jumps_to_a_date_in_synapses_history(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str]
) -> None:
    """Sotto joins late without fetching history: its /timestamp_to_event asks Synapse, then
    fetches the event Synapse names."""
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        syn = synapse_client(synapse, "lee", http)
        room_id = await syn.create_room(preset="public_chat")
        await asyncio.sleep(0.05)
        first = await syn.send(room_id, "synapse's first message")
        event = await syn.call("GET", f"/rooms/{room_id}/event/{first}")
        await asyncio.sleep(0.05)
        await syn.send(room_id, "later")
        federation_of(sotto).membership.after_join.clear()  # no history fetched on joining
        max_ = await Client.login(sotto, "max", http)
        await max_.join(room_id, via=[synapse.server_name])
        assert await sotto.hs.events.get_event(first) is None
        url = f"{sotto.base_url}/_matrix/client/v1/rooms/{room_id}/timestamp_to_event"
        params = {"ts": str(event["origin_server_ts"]), "dir": "f"}
        async with http.get(url, params=params, headers={"Authorization": f"Bearer {max_.token}"}) as resp:
            body = await resp.json()
        assert resp.status == 200, body
        assert body["event_id"] == first
        assert await sotto.hs.events.get_event(first) is not None
