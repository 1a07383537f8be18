"""A room blocked on B (admin API) between two servers: B's users neither join it nor
accept invites to it, whoever hosts it."""

from __future__ import annotations

from tests.federation.support import CertAuthority, has_membership, server_pair, wait_for


async def test_a_remote_room_blocked_here(test_ca: CertAuthority, tmp_dirs: tuple[str, str]) -> None:
    async with server_pair(test_ca, tmp_dirs) as (a, b, alice, bob):
        room_id = await alice.create_room(preset="public_chat")
        await b.hs.events.set_room_blocked(room_id, "@admin:" + b.server_name)
        refused = await bob.join(room_id, via=[a.server_name], expect=403)
        assert refused["errcode"] == "M_FORBIDDEN"
        invite = await alice.call("POST", f"/rooms/{room_id}/invite", {"user_id": bob.user_id}, expect=403)
        assert invite["errcode"] == "M_FORBIDDEN"
        # Invited while it was not blocked: B holds the invite, yet accepting it is refused.
        await b.hs.events.set_room_blocked(room_id, None)
        await alice.call("POST", f"/rooms/{room_id}/invite", {"user_id": bob.user_id})
        await wait_for(lambda: has_membership(b, room_id, bob.user_id, "invite"), what="the invite on B")
        await b.hs.events.set_room_blocked(room_id, "@admin:" + b.server_name)
        assert (await bob.join(room_id, expect=403))["errcode"] == "M_FORBIDDEN"
        await b.hs.events.set_room_blocked(room_id, None)
        await bob.join(room_id)
