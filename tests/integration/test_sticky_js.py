"""matrix-js-sdk 43 and sticky events (MSC4354) end to end (tests/js/sticky_client.mjs):
Alice sends a sticky event and joins a MatrixRTC session with sticky memberships, then 35
messages; Bob (/sync v3, a 5-event timeline) and Carol (sliding sync with the MSC4480
extension, a 2-event timeline) start afterwards and still get both, with their expiry; an
RTC decline goes out sticky (from a client without js-sdk's event scheduler); leaving the
session reaches both."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from homeserver.api.sliding_sync import SLIDING_SYNC_KEY
from tests.support.http import RawClient
from tests.support.js import run_node_script
from tests.support.server import RunningServer

MEMBER = "org.matrix.msc4143.rtc.member"


async def test_js_sdk_sees_sticky_events_past_its_timeline(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    logins = {who: await server.login(who.lower()) for who in ("ALICE", "BOB", "CAROL")}
    alice = RawClient(http, server.base_url, logins["ALICE"]["access_token"], logins["ALICE"]["user_id"])
    room = await alice.create_room(preset="public_chat", name="call")
    for who in ("BOB", "CAROL"):
        joiner = RawClient(http, server.base_url, logins[who]["access_token"], logins[who]["user_id"])
        assert (await joiner.join(room))[0] == 200
    env = {"HS_URL": server.base_url, "ROOM_ID": room, "MESSAGES": "35"}
    for who, login in logins.items():
        env |= {
            f"{who}_USER_ID": login["user_id"],
            f"{who}_ACCESS_TOKEN": login["access_token"],
            f"{who}_DEVICE_ID": login["device_id"],
        }
    result = await run_node_script("sticky_client.mjs", env, timeout=120)

    sticky = result["sticky_event_id"]
    assert result["alice_rtc_joined"] is True
    for who in ("bob", "carol"):
        seen = result[who]
        # The timeline no longer reaches it: only the sticky section / extension had it.
        assert seen["in_timeline"] is False, seen
        by_id = {e["event_id"]: e for e in seen["sticky"]}
        assert by_id[sticky]["type"] == MEMBER and by_id[sticky]["key"] == "DEV1"
        assert 540_000 < by_id[sticky]["expires_in"] <= 600_000, by_id[sticky]
        # The RTC membership (a sticky event too) makes Alice a member of the session.
        assert logins["ALICE"]["user_id"] in seen["rtc_members"]
        assert any(e["type"] == MEMBER and e["event_id"] != sticky for e in seen["sticky"])
        assert result[f"{who}_got_decline"] is True and result[f"{who}_saw_leave"] is True
    assert result["left"] is True
    # Carol did sync with sliding sync.
    assert len(server.runner.app[SLIDING_SYNC_KEY].connections) == 1
    # js-sdk 43's event scheduler drops the sticky parameter of an event with a relation
    # (a decline from a createClient client): recorded, not a server matter.
    assert isinstance(result["scheduled_decline_sticky"], bool)
    decline = await alice.ok("GET", f"/rooms/{quote(room)}/event/{quote(result['decline_event_id'])}")
    assert "duration_ms" in decline["msc4354_sticky"]
