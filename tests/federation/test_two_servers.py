"""Two Sotto servers federating: joins, messages both ways, invites, leaves, EDUs, backfill."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from homeserver.api.media import REMOTE_MEDIA_EXPIRY_KEY
from homeserver.handlers.remote_media_cache import REMOTE_CACHE
from tests.federation.support import (
    CertAuthority,
    Client,
    fed_server,
    federation_of,
    has_membership,
    room_bodies,
    wait_for,
)
from tests.support.server import RunningServer


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_remote_join_and_messages_both_ways(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str], version: str
) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        room_id = await alice.create_room(preset="public_chat", room_version=version, name="Fed room")
        await alice.send(room_id, "before bob")
        assert (await bob.join(room_id, via=[a.server_name]))["room_id"] == room_id
        # Bob's server knows the room's state and history.
        members = await b.hs.events.get_room_members(room_id)
        assert set(members) == {alice.user_id, bob.user_id}
        await wait_for(lambda: has_membership(a, room_id, bob.user_id), what="bob's join on A")

        await bob.send(room_id, "hello from B")
        await wait_for(lambda: _has_body(alice, room_id, "hello from B"), what="B's message on A")
        await alice.send(room_id, "hello from A")
        await wait_for(lambda: _has_body(bob, room_id, "hello from A"), what="A's message on B")

        # Same state on both servers.
        state_a = await a.hs.events.get_current_state_ids(room_id)
        state_b = await b.hs.events.get_current_state_ids(room_id)
        assert state_a == state_b


async def _has_body(client: Client, room_id: str, body: str) -> bool:
    return body in await room_bodies(client, room_id)


async def _sync_until(
    client: Client, predicate: object, what: str, timeout: float = 20.0
) -> dict[str, object]:
    async def check() -> dict[str, object] | None:
        data = await client.sync(timeout_ms=300)
        return data if predicate(data) else None  # type: ignore[operator]

    return await wait_for(check, timeout=timeout, what=what)  # type: ignore[no-any-return]


async def test_invite_join_leave_kick_typing_receipts(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        room_id = await alice.create_room(preset="private_chat", name="Invite only")
        await bob.sync()
        await alice.call("POST", f"/rooms/{room_id}/invite", {"user_id": bob.user_id})
        data = await _sync_until(bob, lambda d: room_id in d["rooms"]["invite"], "invite on B")
        invite_state = data["rooms"]["invite"][room_id]["invite_state"]["events"]  # type: ignore[index]
        assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id for e in invite_state)
        # The inviting server's room summary names the room on the invitee's server; it came
        # as full PDUs with the create event (spec v1.16), and clients get it stripped.
        assert {"type": "m.room.name", "content": {"name": "Invite only"}}.items() <= next(
            e for e in invite_state if e["type"] == "m.room.name"
        ).items()
        assert "m.room.create" in {e["type"] for e in invite_state}
        # B verified the PDUs and kept them stripped.
        membership = await b.hs.events.get_membership(room_id, bob.user_id)
        assert membership is not None
        stored = await b.hs.events.get_event(membership[1])
        assert stored is not None
        kept = stored.event.pdu["unsigned"]["invite_room_state"]
        assert "m.room.create" in {e["type"] for e in kept} and not any("signatures" in e for e in kept)
        assert all(
            set(e) <= {"type", "state_key", "sender", "content", "event_id", "origin_server_ts"}
            for e in invite_state
        )
        # Accept the invite: a remote join through the inviting server.
        await bob.join(room_id)
        await _sync_until(bob, lambda d: room_id in d["rooms"]["join"], "room joined on B")
        await wait_for(lambda: has_membership(a, room_id, bob.user_id), what="bob joined on A")

        # Typing and receipts across servers.
        await alice.sync()
        await bob.call("PUT", f"/rooms/{room_id}/typing/{bob.user_id}", {"typing": True, "timeout": 10000})
        await _sync_until(
            alice,
            lambda d: any(
                e["type"] == "m.typing" and bob.user_id in e["content"]["user_ids"]
                for e in d["rooms"]["join"].get(room_id, {}).get("ephemeral", {}).get("events", [])
            ),
            "typing on A",
        )
        msg = await alice.send(room_id, "please read")
        await wait_for(lambda: _has_body(bob, room_id, "please read"), what="message on B")
        await bob.call("POST", f"/rooms/{room_id}/receipt/m.read/{msg}", {})
        await _sync_until(
            alice,
            lambda d: any(
                e["type"] == "m.receipt" and bob.user_id in str(e["content"].get(msg))
                for e in d["rooms"]["join"].get(room_id, {}).get("ephemeral", {}).get("events", [])
            ),
            "receipt on A",
        )

        # Leave, and come back through an invite; then a kick.
        await bob.call("POST", f"/rooms/{room_id}/leave", {})
        await wait_for(lambda: _membership_on(a, room_id, bob.user_id, "leave"), what="leave on A")
        await bob.call("POST", f"/rooms/{room_id}/forget", {})
        # B is out of the room now: it must not miss what happens meanwhile.
        name_id = await alice.state(room_id, "m.room.name", {"name": "Renamed while away"})
        await alice.call("POST", f"/rooms/{room_id}/invite", {"user_id": bob.user_id})
        await wait_for(lambda: _membership_on(b, room_id, bob.user_id, "invite"), what="second invite on B")
        await bob.join(room_id)
        await wait_for(lambda: has_membership(a, room_id, bob.user_id), what="bob back on A")
        state_b = await b.hs.events.get_current_state_ids(room_id)
        assert state_b[("m.room.name", "")] == name_id
        assert state_b == await a.hs.events.get_current_state_ids(room_id)
        await bob.sync()
        await alice.call("POST", f"/rooms/{room_id}/kick", {"user_id": bob.user_id, "reason": "bye"})
        await wait_for(lambda: _membership_on(b, room_id, bob.user_id, "leave"), what="kick on B")
        # Joining again undid the forget: the kick reaches bob's sync.
        await _sync_until(bob, lambda d: room_id in d["rooms"]["leave"], "kick in bob's sync")


async def test_remote_invite_to_a_user_who_blocks_invites(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    """Invite permission over federation: B refuses the invite with M_INVITE_BLOCKED, and A's
    inviter gets that answer."""
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        await bob.call(
            "PUT", f"/user/{bob.user_id}/account_data/m.invite_permission_config", {"default_action": "block"}
        )
        room_id = await alice.create_room(preset="private_chat")
        out = await alice.call("POST", f"/rooms/{room_id}/invite", {"user_id": bob.user_id}, expect=403)
        assert out["errcode"] == "M_INVITE_BLOCKED"
        assert await b.hs.events.get_membership(room_id, bob.user_id) is None
        assert await a.hs.events.get_membership(room_id, bob.user_id) is None


async def test_reject_remote_invite(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        room_id = await alice.create_room(preset="private_chat")
        await alice.call("POST", f"/rooms/{room_id}/invite", {"user_id": bob.user_id})
        await wait_for(lambda: _membership_on(b, room_id, bob.user_id, "invite"), what="invite on B")
        await bob.call("POST", f"/rooms/{room_id}/leave", {})
        await wait_for(lambda: _membership_on(a, room_id, bob.user_id, "leave"), what="rejection on A")
        assert await _membership_on(b, room_id, bob.user_id, "leave")


async def test_history_backfilled_on_join(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        room_id = await alice.create_room(preset="public_chat")
        for i in range(15):
            await alice.send(room_id, f"old {i}")
        await bob.join(room_id, via=[a.server_name])
        bodies = await room_bodies(bob, room_id)
        assert [f"old {i}" for i in range(15)] == [x for x in bodies if x.startswith("old")]
        # A federation backfill request answers with the newest events first, bounded by limit.
        fb = federation_of(b)
        extremities, _ = await a.hs.events.get_extremities_and_depth(room_id)
        body = await fb.client.get(
            a.server_name,
            f"/_matrix/federation/v1/backfill/{quote(room_id, safe='')}",
            query=[("v", extremities[0]), ("limit", "5")],
        )
        assert len(body["pdus"]) == 5


async def _membership_on(srv: object, room_id: str, user_id: str, membership: str) -> bool:
    found = await srv.hs.events.get_membership(room_id, user_id)  # type: ignore[attr-defined]
    return found is not None and found[0] == membership


async def test_profile_alias_join_and_server_acl(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        await bob.call("PUT", f"/profile/{bob.user_id}/displayname", {"displayname": "Bob B."})
        await bob.call("PUT", f"/profile/{bob.user_id}/m.tz", {"m.tz": "Asia/Tokyo"})
        profile = await alice.call("GET", f"/profile/{bob.user_id}")
        assert profile["displayname"] == "Bob B." and profile["m.tz"] == "Asia/Tokyo"
        # One custom field, asked for alone over federation.
        assert await alice.call("GET", f"/profile/{bob.user_id}/m.tz") == {"m.tz": "Asia/Tokyo"}

        room_id = await alice.create_room(preset="public_chat", room_alias_name="fedroom")
        alias = f"#fedroom:{a.server_name}"
        assert (await bob.join(alias))["room_id"] == room_id
        await wait_for(lambda: has_membership(a, room_id, bob.user_id), what="bob joined by alias")
        await bob.send(room_id, "allowed")
        await wait_for(lambda: _has_body(alice, room_id, "allowed"), what="message before the ACL")

        # An ACL refusing IP-literal servers shuts B out: A drops B's events from then on.
        acl_id = await alice.state(room_id, "m.room.server_acl", {"allow": ["*"], "allow_ip_literals": False})
        await wait_for(lambda: _has_event(b, acl_id), what="ACL on B")
        await bob.send(room_id, "after acl")
        fb = federation_of(b)
        assert await fb.queue.idle(10)
        assert "after acl" not in await room_bodies(alice, room_id)


async def _has_event(srv: object, event_id: str) -> bool:
    return await srv.hs.events.get_event(event_id) is not None  # type: ignore[attr-defined]


def test_acl_matching() -> None:
    from bridge.acl import server_allowed

    acl = {"allow": ["*.example.org", "good.net"], "deny": ["bad.example.org"], "allow_ip_literals": False}
    assert server_allowed("a.example.org:8448", acl)
    assert server_allowed("good.net", acl)
    assert not server_allowed("bad.example.org", acl)
    assert not server_allowed("evil.com", acl)
    assert not server_allowed("127.0.0.1:8448", acl)
    assert not server_allowed("[::1]:8448", acl)
    assert server_allowed("127.0.0.1:1", {"allow": ["*"]})
    assert not server_allowed("x.org", {})


async def test_remote_media_download(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca, media={"remote_media_lifetime": "1h"}) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        data = bytes(range(256)) * 40
        async with http.post(
            f"{a.base_url}/_matrix/media/v3/upload",
            params={"filename": "blob.bin"},
            data=data,
            headers={"Authorization": f"Bearer {alice.token}", "Content-Type": "application/octet-stream"},
        ) as resp:
            assert resp.status == 200
            mxc = (await resp.json())["content_uri"]
        server_name, media_id = mxc.removeprefix("mxc://").split("/", 1)
        url = f"{b.base_url}/_matrix/client/v1/media/download/{server_name}/{media_id}"
        for _ in range(2):  # the second download comes from B's cache
            async with http.get(url, headers={"Authorization": f"Bearer {bob.token}"}) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.read() == data
        # B's cache expires after its hour (media.remote_media_lifetime); fetched again then.
        expiry = b.runner.app[REMOTE_MEDIA_EXPIRY_KEY]
        assert await expiry.run_once() == 0
        assert await expiry.run_once(b.hs.clock.time_ms() + 2 * 3_600_000) == 1
        async with http.get(url, headers={"Authorization": f"Bearer {bob.token}"}) as resp:
            assert resp.status == 200 and await resp.read() == data

        # B's admin purges B's cache (not what was fetched after the cut-off); once A has
        # deleted the media, B can no longer serve it.
        tokens: dict[str, str] = {}

        async def as_admin(srv: RunningServer, method: str, path: str, **params: str) -> Any:
            if srv.server_name not in tokens:
                admin_id = await srv.register("root", admin=True)
                tokens[srv.server_name], _ = await srv.hs.auth.create_session(admin_id, None, None)
            headers = {"Authorization": f"Bearer {tokens[srv.server_name]}"}
            async with http.request(method, srv.base_url + path, headers=headers, params=params) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()

        # Quarantined on B: B serves it to no one (A still has it); released, B fetches it
        # again. Deleted from B's cache: fetched again on the next download.
        remote = f"/_synapse/admin/v1/media/{quote(server_name)}/{media_id}"
        await as_admin(b, "POST", f"/_synapse/admin/v1/media/quarantine/{quote(server_name)}/{media_id}")
        assert (await as_admin(b, "GET", remote))["media_info"]["quarantined"] is True
        async with http.get(url, headers={"Authorization": f"Bearer {bob.token}"}) as resp:
            assert resp.status == 404
        await as_admin(b, "POST", f"/_synapse/admin/v1/media/unquarantine/{quote(server_name)}/{media_id}")
        async with http.get(url, headers={"Authorization": f"Bearer {bob.token}"}) as resp:
            assert resp.status == 200 and await resp.read() == data
        info = (await as_admin(b, "GET", remote))["media_info"]
        assert (info["quarantined"], info["media_length"]) == (False, len(data))
        assert await as_admin(b, "DELETE", remote) == {"deleted_media": [media_id], "total": 1}
        async with http.get(url, headers={"Authorization": f"Bearer {bob.token}"}) as resp:
            assert resp.status == 200 and await resp.read() == data

        purge = "/_synapse/admin/v1/purge_media_cache"
        assert await as_admin(b, "POST", purge, before_ts="1") == {"deleted": 0}
        now = str(int(time.time() * 1000) + 1000)
        assert await as_admin(b, "POST", purge, before_ts=now) == {"deleted": 1}
        cache = Path(b.hs.config.resolve_path(b.hs.config.media_store_path)) / REMOTE_CACHE
        assert [p for p in cache.rglob("*") if p.is_file()] == []
        await as_admin(a, "DELETE", f"/_synapse/admin/v1/media/{quote(server_name)}/{media_id}")
        async with http.get(url, headers={"Authorization": f"Bearer {bob.token}"}) as resp:
            assert resp.status == 404


async def test_restricted_join_authorised_by_resident_server(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        space = await alice.create_room(preset="public_chat", room_version="11")
        rule = {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}
        restricted = await alice.create_room(
            room_version="11", initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": rule}]
        )
        # Not a member of the space yet: refused.
        await bob.join(restricted, via=[a.server_name], expect=403)
        await bob.join(space, via=[a.server_name])
        await wait_for(lambda: has_membership(a, space, bob.user_id), what="bob in the space")
        await bob.join(restricted, via=[a.server_name])
        await wait_for(lambda: has_membership(a, restricted, bob.user_id), what="restricted join on A")
        member = await alice.call("GET", f"/rooms/{restricted}/state/m.room.member/{bob.user_id}")
        assert member["join_authorised_via_users_server"] == alice.user_id


async def test_presence_across_servers(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        room_id = await alice.create_room(preset="public_chat")
        await bob.join(room_id, via=[a.server_name])
        await wait_for(lambda: has_membership(a, room_id, bob.user_id), what="bob joined on A")
        status = {"presence": "unavailable", "status_msg": "lunch"}
        await bob.call("PUT", f"/presence/{bob.user_id}/status", status)

        async def seen() -> bool:
            got = await alice.call("GET", f"/presence/{bob.user_id}/status")
            return bool(got.get("presence") == "unavailable" and got.get("status_msg") == "lunch")

        await wait_for(seen, what="B's presence on A")


async def test_backfill_on_demand_fetches_older_history(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        room_id = await alice.create_room(preset="public_chat")
        for i in range(80):
            await alice.send(room_id, f"old {i}")
        await bob.join(room_id, via=[a.server_name])
        # The join fetched the newest 50 events; paginating /messages past them fetches the rest
        # from the other server on demand.
        seen: list[str] = []
        ids: dict[str, str] = {}
        params: dict[str, Any] = {"dir": "b", "limit": "20"}
        for _ in range(20):
            page = await bob.call("GET", f"/rooms/{room_id}/messages", **params)
            messages = [e for e in page["chunk"] if e["type"] == "m.room.message"]
            seen.extend(e["content"].get("body", "") for e in messages)
            ids.update({e["content"].get("body", ""): e["event_id"] for e in messages})
            if "end" not in page:
                break
            params["from"] = page["end"]
        bodies = [x for x in reversed(seen) if x.startswith("old")]
        assert bodies == [f"old {i}" for i in range(80)]
        # /context around a backfilled event (before bob's server joined) still has the
        # room's state: the sender's member event, with lazy-loading, and the create event.
        context = await bob.call(
            "GET", f"/rooms/{room_id}/context/{ids['old 0']}", limit="2", filter='{"lazy_load_members":true}'
        )
        assert {(e["type"], e["state_key"]) for e in context["state"]} >= {
            ("m.room.create", ""),
            ("m.room.member", alice.user_id),
        }


async def test_join_a_room_with_much_state(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    """A send_join response of several hundred kilobytes arrives whole (it is read to its end)."""
    async with (
        fed_server(tmp_dirs[0], test_ca) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = await Client.login(a, "alice", http)
        bob = await Client.login(b, "bob", http)
        room_id = await alice.create_room(preset="public_chat")
        for i in range(400):
            await alice.state(room_id, "org.example.big", {"i": i, "pad": "x" * 200}, state_key=f"k{i}")
        await bob.join(room_id, via=[a.server_name])
        state = await bob.call("GET", f"/rooms/{room_id}/state")
        assert len([e for e in state if e["type"] == "org.example.big"]) == 400
