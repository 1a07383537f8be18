"""Server-side search over messages the user can see."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
from nio import RoomSendResponse

from tests.support.http import RawClient
from tests.support.nio_clients import nio_client
from tests.support.server import RunningServer


async def test_search_finds_a_message(server: RunningServer) -> None:
    async with nio_client(server, "alice") as alice, nio_client(server, "bob") as bob, \
            nio_client(server, "eve") as eve:
        room_id = (await alice.room_create(invite=[bob.user_id])).room_id
        await bob.join(room_id)
        sent = await bob.room_send(room_id, "m.room.message",
                                   {"msgtype": "m.text", "body": "The Quick brown fox"})
        assert isinstance(sent, RoomSendResponse)
        await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "something else"})
        other = (await eve.room_create()).room_id
        await eve.room_send(other, "m.room.message", {"msgtype": "m.text", "body": "a secret fox"})

        async with aiohttp.ClientSession() as session:
            raw = RawClient(session, server.base_url, alice.access_token, alice.user_id)
            body = {"search_categories": {"room_events": {
                "search_term": "quick fox", "event_context": {"before_limit": 1, "after_limit": 1,
                                                             "include_profile": True},
                "groupings": {"group_by": [{"key": "room_id"}]}}}}
            out = await raw.ok("POST", "/search", json=body)
            events = out["search_categories"]["room_events"]
            assert [r["result"]["event_id"] for r in events["results"]] == [sent.event_id]
            assert events["count"] == 1 and set(events["highlights"]) == {"quick", "fox"}
            ctx = events["results"][0]["context"]
            assert ctx["events_after"][0]["content"]["body"] == "something else"
            assert bob.user_id in ctx["profile_info"]
            assert events["groups"]["room_id"][room_id]["results"] == [sent.event_id]

            # Eve's private room is not searchable by alice; eve finds only her own message.
            eve_raw = RawClient(session, server.base_url, eve.access_token, eve.user_id)
            eve_out = await eve_raw.ok("POST", "/search", json={
                "search_categories": {"room_events": {"search_term": "fox"}}})
            eve_results = eve_out["search_categories"]["room_events"]["results"]
            assert [r["result"]["room_id"] for r in eve_results] == [other]
            # LIKE's wildcards in a search term are taken literally.
            for term in ("f_x", "qu_ck"):
                out = await raw.ok("POST", "/search", json={
                    "search_categories": {"room_events": {"search_term": term}}})
                assert out["search_categories"]["room_events"]["results"] == []

            # Redacted messages leave the index.
            await raw.request("PUT", f"/rooms/{quote(room_id)}/redact/{quote(sent.event_id)}/r1", json={})
            again = await raw.ok("POST", "/search", json=body)
            assert again["search_categories"]["room_events"]["results"] == []

            # Pagination with next_batch.
            for i in range(3):
                await raw.send(room_id, f"paged message {i}", f"p{i}")
            paged = {"search_categories": {"room_events": {"search_term": "paged",
                                                           "filter": {"limit": 2}}}}
            first = (await raw.ok("POST", "/search", json=paged))["search_categories"]["room_events"]
            assert [r["result"]["content"]["body"] for r in first["results"]] == [
                "paged message 2", "paged message 1"]
            second = (await raw.ok("POST", "/search", json=paged, params={"next_batch": first["next_batch"]}))
            rest = second["search_categories"]["room_events"]
            assert [r["result"]["content"]["body"] for r in rest["results"]] == ["paged message 0"]
            assert "next_batch" not in rest
