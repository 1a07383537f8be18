"""Policy Servers (spec v1.18) between Sotto servers: A hosts the room, P is its Policy
Server (a Sotto with `policy_server` on) with a user joined."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from bridge.client import RemoteError
from bridge.policy import SIGN_PATH, PolicyServerInfo, has_valid_signature
from homeserver.errors import MatrixError
from homeserver.events import Event, generate_signing_key
from homeserver.events.model import pdu_json
from homeserver.events.signing import encode_verify_key
from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    forge_message,
    has_membership,
    room_bodies,
    send_pdus,
    wait_for,
)
from tests.federation.synapse import SynapseServer
from tests.support.server import RunningServer

KEYWORD = "Buy-Now"
POLICY = {"enabled": True, "keywords": [KEYWORD.lower()], "blocked_users": ["@mallory:*"]}


async def well_known_key(http: aiohttp.ClientSession, srv: RunningServer) -> str:
    async with http.get(srv.base_url + "/.well-known/matrix/policy_server") as resp:
        assert resp.status == 200
        body = await resp.json()
    return str(body["public_keys"]["ed25519"])


async def stored(srv: RunningServer, event_id: str) -> Event:
    found = await srv.hs.events.get_pdus([event_id])
    assert event_id in found, event_id
    return found[event_id]


async def serves(p: RunningServer, room_id: str) -> bool:
    local = federation_of(p).policy.local
    assert local is not None
    return await local.serves(room_id)


@asynccontextmanager
async def policed_room(
    ca: CertAuthority, dirs: tuple[str, str]
) -> AsyncIterator[tuple[RunningServer, RunningServer, Client, Client, str, PolicyServerInfo]]:
    """A with alice's public room; P, the Policy Server, with pbot joined; the room's
    m.room.policy names P with the key P publishes, and P knows it."""
    async with (
        fed_server(dirs[0], ca) as a,
        fed_server(dirs[1], ca, policy_server=POLICY) as p,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        pbot = await Client.login(p, "pbot", http)
        room_id = await alice.create_room(preset="public_chat")
        await pbot.join(room_id, via=[a.server_name])
        await wait_for(lambda: has_membership(a, room_id, pbot.user_id), what="pbot joined on A")
        ps = PolicyServerInfo(p.server_name, await well_known_key(http, p))
        await alice.state(
            room_id, "m.room.policy", {"via": ps.server_name, "public_keys": {"ed25519": ps.public_key}}
        )
        await wait_for(lambda: serves(p, room_id), what="P sees itself named")
        yield a, p, alice, pbot, room_id, ps


async def test_local_events_carry_the_policy_servers_signature_or_are_refused(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with policed_room(test_ca, tmp_dirs) as (a, p, alice, pbot, room_id, ps):
        # A message and a state event: each signed by P with the key in the room's state.
        hello = await alice.send(room_id, "hello")
        topic = await alice.state(room_id, "m.room.topic", {"topic": "policed"})
        for event_id in (hello, topic):
            assert has_valid_signature(await stored(a, event_id), ps)
        await wait_for(lambda: _has(pbot, room_id, "hello"), what="hello on P")
        assert has_valid_signature(await stored(p, hello), ps)

        # P refuses: the client gets P's own answer, and the event exists nowhere.
        refused = await alice.call(
            "PUT",
            f"/rooms/{room_id}/send/m.room.message/spam1",
            {"msgtype": "m.text", "body": f"please {KEYWORD} today"},
            expect=400,
        )
        assert refused["errcode"] == "M_FORBIDDEN"
        assert "policy server" in refused["error"]
        await alice.send(room_id, "after the refusal")
        await wait_for(lambda: _has(pbot, room_id, "after the refusal"), what="the next message on P")
        for client in (alice, pbot):
            bodies = await room_bodies(client, room_id)
            assert not any(KEYWORD in str(b) for b in bodies), bodies

        # P's own user: P signs its events itself, and A takes them.
        mine = await pbot.send(room_id, "from the policy server")
        assert has_valid_signature(await stored(p, mine), ps)
        await wait_for(lambda: _has(alice, room_id, "from the policy server"), what="P's message on A")
        assert has_valid_signature(await stored(a, mine), ps)

        # A room whose m.room.policy carries another key: P no longer serves it, and says so.
        other_key = encode_verify_key(generate_signing_key("x"))
        await alice.state(
            room_id, "m.room.policy", {"via": ps.server_name, "public_keys": {"ed25519": other_key}}
        )
        await wait_for(lambda: _not(serves(p, room_id)), what="P seeing the new key")
        wrong = await alice.call(
            "PUT", f"/rooms/{room_id}/send/m.room.message/k1", {"msgtype": "m.text", "body": "hi"}, expect=403
        )
        assert wrong["errcode"] == "M_FORBIDDEN"


async def test_a_batch_asks_at_once_and_builds_again_around_a_refusal(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with policed_room(test_ca, tmp_dirs) as (a, _p, alice, pbot, room_id, ps):
        creator = a.hs.creator
        batches = creator.batches
        bodies = ["one", "two", f"{KEYWORD} three", "four", "five"]
        sends = [
            creator.create_and_send(
                room_id=room_id,
                type="m.room.message",
                sender=alice.user_id,
                content={"msgtype": "m.text", "body": b},
            )
            for b in bodies
        ]
        results = await asyncio.gather(*sends, return_exceptions=True)
        assert creator.batches == batches + 1  # one group commit, the refusal in its middle
        refused = results[2]
        assert isinstance(refused, MatrixError) and refused.errcode == "M_FORBIDDEN"
        events = [r[0] for i, r in enumerate(results) if i != 2 and not isinstance(r, BaseException)]
        assert len(events) == 4
        # One chain without the refused message, every event signed by P.
        for before, after in itertools.pairwise(events):
            assert after.prev_event_ids == [before.event_id]
        for event in events:
            assert has_valid_signature(await stored(a, event.event_id), ps)
        await wait_for(lambda: _has(pbot, room_id, "five"), what="the batch on P")
        assert [b for b in await room_bodies(pbot, room_id) if b in bodies] == ["one", "two", "four", "five"]


async def test_a_room_whose_policy_server_left_needs_no_signature(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with policed_room(test_ca, tmp_dirs) as (a, p, alice, pbot, room_id, ps):
        await pbot.call("POST", f"/rooms/{room_id}/leave", {})
        await wait_for(lambda: has_membership(a, room_id, pbot.user_id, "leave"), what="pbot left on A")
        event_id = await alice.send(room_id, f"{KEYWORD} now that nobody checks")
        assert ps.server_name not in (await stored(a, event_id)).signatures
        # Nor does P sign for a room it has left, though the room still names it.
        await wait_for(lambda: _not(serves(p, room_id)), what="P no longer serving the room")
        with pytest.raises(RemoteError) as e:
            await federation_of(a).client.post(p.server_name, SIGN_PATH, pdu_json(await stored(a, event_id)))
        assert (e.value.status, e.value.errcode) == (403, "M_FORBIDDEN")


async def test_a_room_naming_a_server_that_is_no_policy_server(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with policed_room(test_ca, tmp_dirs) as (a, p, alice, pbot, room_id, _ps):
        # The room names A, which is not a Policy Server: A neither stops its users nor
        # soft-fails other servers' events there. (Other servers ask A, and are refused.)
        other_key = encode_verify_key(generate_signing_key("x"))
        await alice.state(
            room_id, "m.room.policy", {"via": a.server_name, "public_keys": {"ed25519": other_key}}
        )
        sent = await alice.send(room_id, f"{KEYWORD} unchecked")
        assert "ed25519:policy_server" not in (await stored(a, sent)).signatures.get(a.server_name, {})
        forged = await forge_message(a, room_id, pbot.user_id, {"msgtype": "m.text", "body": "from P"}, p)
        await send_pdus(p, a, [pdu_json(forged)], "t-named")
        info = (await federation_of(a).tracker.get_infos([forged.event_id]))[forged.event_id]
        assert not info.soft_failed
        assert "from P" in await room_bodies(alice, room_id)


async def test_remote_events_without_a_signature_are_signed_or_soft_failed(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with policed_room(test_ca, tmp_dirs) as (a, p, alice, pbot, room_id, ps):
        # Events P's server signed but its Policy Server never saw: A asks P for each.
        good = await forge_message(a, room_id, pbot.user_id, {"msgtype": "m.text", "body": "unsigned ok"}, p)
        assert (
            ps.server_name in good.signatures
            and "ed25519:policy_server" not in good.signatures[ps.server_name]
        )
        answers = await send_pdus(p, a, [pdu_json(good)], "t-good")
        assert answers[good.event_id] == {}
        await wait_for(lambda: _has(alice, room_id, "unsigned ok"), what="the signed-on-arrival message on A")
        assert has_valid_signature(await stored(a, good.event_id), ps)

        spam = await forge_message(a, room_id, pbot.user_id, {"msgtype": "m.text", "body": f"{KEYWORD}!"}, p)
        await send_pdus(p, a, [pdu_json(spam)], "t-spam")
        info = (await federation_of(a).tracker.get_infos([spam.event_id]))[spam.event_id]
        assert info.soft_failed and info.rejected_reason is None
        extremities, _ = await a.hs.events.get_extremities_and_depth(room_id)
        assert spam.event_id not in extremities
        assert not any(KEYWORD in str(b) for b in await room_bodies(alice, room_id))

        # A run of two unsigned messages takes the full checks, and both are signed on arrival.
        first = await forge_message(a, room_id, pbot.user_id, {"msgtype": "m.text", "body": "run 1"}, p)
        second = await forge_message(
            a, room_id, pbot.user_id, {"msgtype": "m.text", "body": "run 2"}, p, first
        )
        await send_pdus(p, a, [pdu_json(first), pdu_json(second)], "t-run")
        await wait_for(lambda: _has(alice, room_id, "run 2"), what="the run on A")
        for event in (first, second):
            assert has_valid_signature(await stored(a, event.event_id), ps)


async def test_sign_endpoint_answers(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with policed_room(test_ca, tmp_dirs) as (a, p, alice, _pbot, room_id, ps):
        client = federation_of(a).client
        event = await forge_message(a, room_id, alice.user_id, {"msgtype": "m.text", "body": "ask"}, a)

        async def refusal(body: Any) -> tuple[int, str]:
            with pytest.raises(RemoteError) as e:
                await client.post(p.server_name, SIGN_PATH, body)
            return e.value.status, e.value.errcode

        answer = await client.post(p.server_name, SIGN_PATH, pdu_json(event))
        assert set(answer) == {ps.server_name} and set(answer[ps.server_name]) == {"ed25519:policy_server"}
        event.signatures.setdefault(ps.server_name, {}).update(answer[ps.server_name])
        assert has_valid_signature(event, ps)

        tampered = dict(pdu_json(event), content={"msgtype": "m.text", "body": "other words"})
        assert await refusal(tampered) == (400, "M_BAD_JSON")
        assert await refusal({"room_id": room_id, "type": "m.room.message"}) == (400, "M_BAD_JSON")
        assert await refusal([1, 2]) == (400, "M_NOT_JSON")
        assert await refusal(dict(pdu_json(event), room_id="!elsewhere:example.org")) == (403, "M_FORBIDDEN")
        policy_event = (await a.hs.events.get_current_state(room_id, [("m.room.policy", "")]))[
            ("m.room.policy", "")
        ]
        assert await refusal(pdu_json(policy_event.event)) == (400, "M_BAD_JSON")
        mallory = await forge_message(
            a, room_id, "@mallory:example.org", {"msgtype": "m.text", "body": "hi"}, a
        )
        assert await refusal(pdu_json(mallory)) == (400, "M_FORBIDDEN")


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def _has(client: Client, room_id: str, body: str) -> bool:
    return body in await room_bodies(client, room_id)


@pytest.mark.timeout(900)  # the first Synapse fixture may install Synapse
async def test_synapse_in_a_room_policed_by_sotto(
    synapse: SynapseServer, test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with policed_room(test_ca, tmp_dirs) as (a, _p, alice, pbot, room_id, ps):
        login = synapse.register("ivy")
        ivy = Client(synapse.base_url, login["user_id"], login["access_token"], pbot.session)
        await ivy.join(room_id, via=[a.server_name])
        await wait_for(lambda: has_membership(a, room_id, ivy.user_id), what="ivy joined on A")

        # Synapse asks P to sign its user's events; A receives them signed.
        event_id = await ivy.send(room_id, "from synapse")
        await wait_for(lambda: _has(alice, room_id, "from synapse"), what="Synapse's message on A")
        assert has_valid_signature(await stored(a, event_id), ps)
        refused = await ivy.call(
            "PUT",
            f"/rooms/{room_id}/send/m.room.message/spam",
            {"msgtype": "m.text", "body": f"{KEYWORD} from synapse"},
            expect=400,
        )
        assert refused["errcode"] == "M_FORBIDDEN"

        # Synapse takes Sotto's signed events (it checks the signature against the room's key).
        await alice.send(room_id, "from sotto")
        await wait_for(lambda: _has(ivy, room_id, "from sotto"), what="Sotto's message on Synapse")
        assert not any(KEYWORD in str(b) for b in await room_bodies(alice, room_id))
