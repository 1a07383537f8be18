"""Knocking over federation against a real Synapse (make_knock/send_knock v1), both ways.

A Synapse user knocks on a Sotto room and a Sotto user on a Synapse room (join rules `knock`
and `knock_restricted`); each knock is accepted (an invite, then a join), rejected (a kick)
or retracted (a leave).

Synapse 1.163.2 follows the spec (MSC2403) where it leaves knocks to the servers in the
room: it neither sends the rejection of a knock to the knocker's server nor accepts one sent
to it, and it retracts a knock of its own users locally only (an out-of-band leave, no
make_leave/send_leave). The tests below check what each side then shows.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    has_membership,
    room_bodies,
    wait_for,
)
from tests.federation.synapse import SynapseServer
from tests.support.server import RunningServer

# The first Synapse fixture may install Synapse into its own virtualenv (a minute or two).
pytestmark = pytest.mark.timeout(900)

SLIDING = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
KNOCK = {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}


def synapse_client(synapse: SynapseServer, localpart: str, http: aiohttp.ClientSession) -> Client:
    login = synapse.register(localpart)
    return Client(synapse.base_url, login["user_id"], login["access_token"], http)


async def knock(client: Client, room_id: str, via: str, reason: str | None = None) -> None:
    body = {"reason": reason} if reason else {}
    out = await client.call("POST", f"/knock/{quote(room_id, safe='')}", body, via=via)
    assert out["room_id"] == room_id


async def leave(client: Client, room_id: str) -> None:
    await client.call("POST", f"/rooms/{quote(room_id, safe='')}/leave", {})


async def in_sync(client: Client, section: str, room_id: str) -> dict[str, Any] | None:
    """The room's entry in `rooms.<section>` of the client's next incremental /sync."""
    data = await client.sync(timeout_ms=300)
    found: dict[str, Any] | None = data.get("rooms", {}).get(section, {}).get(room_id)
    return found


async def until_in_sync(client: Client, section: str, room_id: str, what: str) -> dict[str, Any]:
    found: dict[str, Any] = await wait_for(lambda: in_sync(client, section, room_id), timeout=30, what=what)
    return found


async def sections_now(client: Client, room_id: str) -> set[str]:
    """The sections of a full /sync (leaves included) that hold the room."""
    data = await client.call("GET", "/sync", timeout="0", filter='{"room": {"include_leave": true}}')
    return {name for name, rooms in data.get("rooms", {}).items() if room_id in rooms}


async def left_with(client: Client, room_id: str, reason: str) -> bool:
    """The client's next /sync shows it removed from the room with `reason`."""
    room = await in_sync(client, "leave", room_id)
    events = (room or {}).get("timeline", {}).get("events", [])
    return any(
        e["type"] == "m.room.member"
        and e["state_key"] == client.user_id
        and e["content"].get("membership") == "leave"
        and e["content"].get("reason") == reason
        for e in events
    )


async def member(client: Client, room_id: str, user_id: str) -> dict[str, Any]:
    """`user_id`'s member event content in the room, as `client` (a member) sees it."""
    path = f"/rooms/{quote(room_id, safe='')}/state/m.room.member/{quote(user_id, safe='')}"
    out: dict[str, Any] = await client.call("GET", path)
    return out


async def member_is(client: Client, room_id: str, user_id: str, expected: dict[str, Any]) -> bool:
    content = await member(client, room_id, user_id)
    return all(content.get(k) == v for k, v in expected.items())


async def membership_is(client: Client, room_id: str, user_id: str, membership: str) -> bool:
    data = await client.call("GET", f"/rooms/{quote(room_id, safe='')}/members")
    return any(
        e["state_key"] == user_id and e["content"].get("membership") == membership for e in data["chunk"]
    )


async def delivered(sotto: RunningServer, destination: str) -> bool:
    """Sotto's outbound queue to `destination` is empty (the destination answered)."""
    return await federation_of(sotto).store.pending_count(destination) == 0


def by_type(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["type"]: e for e in events if e["type"] != "m.room.member"}


def own_member(events: list[dict[str, Any]], user_id: str) -> dict[str, Any]:
    return next(e for e in events if e["type"] == "m.room.member" and e["state_key"] == user_id)


# Synapse users knock on Sotto rooms ------------------------------------------------------------


@pytest.mark.parametrize("version", ["11", "12"])
async def test_synapse_user_knocks_on_a_sotto_room(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str], version: str
) -> None:
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        mod = await Client.login(sotto, "mod", http)
        room_id = await mod.create_room(room_version=version, name="Sotto knock room", initial_state=[KNOCK])
        accepted, rejected, retracting = (
            synapse_client(synapse, f"knocker_{name}_{version}", http) for name in ("in", "out", "back")
        )
        for user in (accepted, rejected, retracting):
            await user.sync()

        async def knocked_on_sotto(user: Client, reason: str | None = None) -> None:
            # (A knock Synapse retracted locally may still stand on Sotto: wait for this one.)
            expected = {"membership": "knock", "reason": reason}
            await knock(user, room_id, sotto.server_name, reason)
            await wait_for(lambda: member_is(mod, room_id, user.user_id, expected), what="knock on Sotto")

        # The knock is in Sotto's room, with its reason; the knocker's /sync shows it with
        # the stripped state Sotto returned.
        await knocked_on_sotto(accepted, "let me in")
        knocked = await until_in_sync(accepted, "knock", room_id, "knock in Synapse's /sync")
        events = knocked["knock_state"]["events"]
        assert by_type(events)["m.room.name"]["content"]["name"] == "Sotto knock room"
        assert by_type(events)["m.room.join_rules"]["content"]["join_rule"] == "knock"
        assert own_member(events, accepted.user_id)["content"]["membership"] == "knock"

        # While Synapse is not in the room: Sotto sends the kick of a knocker to the
        # knocker's server too; Synapse answers the transaction but drops the event.
        await knocked_on_sotto(rejected)
        await mod.call("POST", f"/rooms/{room_id}/kick", {"user_id": rejected.user_id, "reason": "no"})
        assert await has_membership(sotto, room_id, rejected.user_id, "leave")
        await wait_for(lambda: delivered(sotto, synapse.server_name), what="kick delivered to Synapse")
        assert await sections_now(rejected, room_id) == {"knock"}
        # ... and Synapse retracts a knock locally only (no make_leave to Sotto).
        await knocked_on_sotto(retracting)
        await leave(retracting, room_id)
        await until_in_sync(retracting, "leave", room_id, "retraction in Synapse's /sync")
        assert await has_membership(sotto, room_id, retracting.user_id, "knock")

        # Accepted: an invite reaches Synapse, its user joins through Sotto.
        await mod.call("POST", f"/rooms/{room_id}/invite", {"user_id": accepted.user_id})
        await until_in_sync(accepted, "invite", room_id, "invite in Synapse's /sync")
        await accepted.join(room_id, via=[sotto.server_name])
        await wait_for(lambda: has_membership(sotto, room_id, accepted.user_id), what="join on Sotto")
        await mod.send(room_id, "welcome in")
        await wait_for(lambda: _has(accepted, room_id, "welcome in"), what="message on Synapse")

        # Now that Synapse is in the room, a rejection reaches the knocker's /sync ...
        await knocked_on_sotto(rejected, "second try")
        await mod.call("POST", f"/rooms/{room_id}/kick", {"user_id": rejected.user_id, "reason": "still no"})
        await wait_for(lambda: left_with(rejected, room_id, "still no"), what="rejection in Synapse's /sync")
        # ... and a retraction reaches Sotto.
        await knocked_on_sotto(retracting, "again")
        await leave(retracting, room_id)
        await wait_for(lambda: has_membership(sotto, room_id, retracting.user_id, "leave"), what="retraction")


# Sotto users knock on Synapse rooms ------------------------------------------------------------


@pytest.mark.parametrize("version", ["11", "12"])
async def test_sotto_user_knocks_on_a_synapse_room(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str], version: str
) -> None:
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        admin = synapse_client(synapse, f"knock_admin_{version}", http)
        room_id = await admin.create_room(
            room_version=version, name="Synapse knock room", initial_state=[KNOCK]
        )
        accepted, rejected, retracting = [
            await Client.login(sotto, name, http) for name in ("nia", "oli", "pia")
        ]
        for user in (accepted, rejected, retracting):
            await user.sync()

        async def knocked_on_synapse(user: Client, reason: str | None = None) -> None:
            await knock(user, room_id, synapse.server_name, reason)
            await wait_for(
                lambda: membership_is(admin, room_id, user.user_id, "knock"), what="knock on Synapse"
            )
            assert (await member(admin, room_id, user.user_id)).get("reason") == reason

        # Knocked: rooms.knock in Sotto's /sync, with the stripped state Synapse returned.
        await knocked_on_synapse(accepted, "hello from sotto")
        knocked = await until_in_sync(accepted, "knock", room_id, "knock in Sotto's /sync")
        events = knocked["knock_state"]["events"]
        assert by_type(events)["m.room.name"]["content"]["name"] == "Synapse knock room"
        assert by_type(events)["m.room.join_rules"]["content"]["join_rule"] == "knock"
        assert by_type(events)["m.room.create"]["content"].get("room_version", "1") == version
        mine = own_member(events, accepted.user_id)["content"]
        assert mine["membership"] == "knock" and mine["reason"] == "hello from sotto"
        # Sliding sync lists it as knocked, named from that state.
        out = await _sliding(accepted)
        assert out["rooms"][room_id]["membership"] == "knock"
        assert out["rooms"][room_id]["name"] == "Synapse knock room"

        # While Sotto is not in the room: Synapse does not send the kick of a knocker to the
        # knocker's server (MSC2403 leaves that out), so Sotto still shows the knock ...
        await knocked_on_synapse(rejected)
        await admin.call("POST", f"/rooms/{room_id}/kick", {"user_id": rejected.user_id, "reason": "no"})
        assert await membership_is(admin, room_id, rejected.user_id, "leave")
        assert await has_membership(sotto, room_id, rejected.user_id, "knock")
        # ... until the user retracts it (Synapse refuses make_leave: it is left already).
        await leave(rejected, room_id)
        await until_in_sync(rejected, "leave", room_id, "leave in Sotto's /sync")
        # Retracted: make_leave/send_leave to Synapse, which then holds the leave.
        await knocked_on_synapse(retracting)
        await until_in_sync(retracting, "knock", room_id, "3rd knock in Sotto's /sync")
        await leave(retracting, room_id)
        await wait_for(lambda: membership_is(admin, room_id, retracting.user_id, "leave"), what="retraction")
        await until_in_sync(retracting, "leave", room_id, "retraction in Sotto's /sync")

        # Accepted: Synapse's invite shows in Sotto's /sync; the user joins through Synapse.
        await admin.call("POST", f"/rooms/{room_id}/invite", {"user_id": accepted.user_id})
        await until_in_sync(accepted, "invite", room_id, "invite in Sotto's /sync")
        await accepted.join(room_id, via=[synapse.server_name])
        await wait_for(
            lambda: membership_is(admin, room_id, accepted.user_id, "join"), what="join on Synapse"
        )
        await admin.send(room_id, "welcome to synapse")
        await wait_for(lambda: _has(accepted, room_id, "welcome to synapse"), what="message on Sotto")

        # Now that Sotto is in the room, a rejection reaches the knocker's /sync.
        await knocked_on_synapse(rejected, "second try")
        await admin.call(
            "POST", f"/rooms/{room_id}/kick", {"user_id": rejected.user_id, "reason": "still no"}
        )
        await wait_for(lambda: left_with(rejected, room_id, "still no"), what="rejection in Sotto's /sync")


# knock_restricted ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["10", "12"])
async def test_knock_restricted_both_ways(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_path: os.PathLike[str], version: str
) -> None:
    async with fed_server(str(tmp_path), test_ca) as sotto, aiohttp.ClientSession() as http:
        syn = synapse_client(synapse, f"kr_user_{version}", http)
        local = await Client.login(sotto, "kr_local", http)

        def restricted(space: str) -> list[dict[str, Any]]:
            allow = [{"type": "m.room_membership", "room_id": space}]
            content = {"join_rule": "knock_restricted", "allow": allow}
            return [{"type": "m.room.join_rules", "state_key": "", "content": content}]

        # On Sotto: Synapse's user is in no room of the allow list, so knocks.
        sotto_space = await local.create_room(room_version=version)
        sotto_room = await local.create_room(room_version=version, initial_state=restricted(sotto_space))
        await knock(syn, sotto_room, sotto.server_name, "restricted, knocking")
        await wait_for(lambda: has_membership(sotto, sotto_room, syn.user_id, "knock"), what="knock on Sotto")
        assert (await member(local, sotto_room, syn.user_id))["reason"] == "restricted, knocking"
        await local.call("POST", f"/rooms/{sotto_room}/invite", {"user_id": syn.user_id})
        await wait_for(lambda: _invited(syn, sotto_room), what="invite on Synapse")
        await syn.join(sotto_room, via=[sotto.server_name])
        await wait_for(lambda: has_membership(sotto, sotto_room, syn.user_id), what="join on Sotto")

        # On Synapse: the same the other way.
        syn_space = await syn.create_room(room_version=version)
        syn_room = await syn.create_room(room_version=version, initial_state=restricted(syn_space))
        await local.sync()
        await knock(local, syn_room, synapse.server_name, "me too")
        knocked = await until_in_sync(local, "knock", syn_room, "knock in Sotto's /sync")
        rule = by_type(knocked["knock_state"]["events"])["m.room.join_rules"]["content"]
        assert rule["join_rule"] == "knock_restricted"
        assert (await member(syn, syn_room, local.user_id))["membership"] == "knock"
        await syn.call("POST", f"/rooms/{syn_room}/invite", {"user_id": local.user_id})
        await until_in_sync(local, "invite", syn_room, "invite in Sotto's /sync")
        await local.join(syn_room, via=[synapse.server_name])
        await wait_for(lambda: membership_is(syn, syn_room, local.user_id, "join"), what="join on Synapse")


async def _has(client: Client, room_id: str, body: str) -> bool:
    return body in await room_bodies(client, room_id)


async def _invited(client: Client, room_id: str) -> bool:
    return "invite" in await sections_now(client, room_id)


async def _sliding(client: Client) -> dict[str, Any]:
    body = {"lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": []}}}
    url = client.base_url + SLIDING
    async with client.session.post(
        url, json=body, params={"timeout": "0"}, headers={"Authorization": f"Bearer {client.token}"}
    ) as resp:
        out: dict[str, Any] = await resp.json()
        assert resp.status == 200, out
        return out
