"""Reporting events, rooms and users."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
from sqlalchemy import select

from homeserver.storage.cs_schema import reports
from tests.support.http import RawClient
from tests.support.server import RunningServer


async def test_reports_are_stored_and_invisible_events_are_not_found(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as session:
        logins = [await server.login(n) for n in ("alice", "bob", "eve")]
        alice, bob, eve = (
            RawClient(session, server.base_url, lg["access_token"], lg["user_id"]) for lg in logins
        )
        room_id = await alice.create_room(preset="public_chat")
        await bob.join(room_id)
        event_id = await alice.send(room_id, "rude words", "t1")
        r = quote(room_id)
        await bob.ok("POST", f"/rooms/{r}/report/{quote(event_id)}", json={"reason": "spam", "score": -100})
        await bob.ok("POST", f"/rooms/{r}/report", json={"reason": "bad room"})
        await bob.ok("POST", f"/users/{quote(alice.user_id)}/report", json={"reason": "bad user"})
        status, body = await eve.request("POST", f"/rooms/{r}/report/{quote(event_id)}", json={"reason": "x"})
        assert status == 404 and body["errcode"] == "M_NOT_FOUND"
        status, body = await bob.request("POST", f"/rooms/{r}/report/{quote(event_id)}", json={"score": 5})
        assert status == 400
        async with server.hs.db.read() as conn:
            rows = (await conn.execute(select(reports.c.kind, reports.c.reason))).all()
        assert sorted(rows) == [("event", "spam"), ("room", "bad room"), ("user", "bad user")]
