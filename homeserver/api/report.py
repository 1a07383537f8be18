"""Reporting events, rooms and users to the server's administrators."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.errors import Codes, MatrixError, not_found
from homeserver.server import HomeServer
from homeserver.storage.reports import ReportStore

log = logging.getLogger(__name__)

MAX_REASON = 1000


def _reason(body: dict[str, Any]) -> str | None:
    reason = body.get("reason")
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise MatrixError(400, Codes.BAD_JSON, "reason must be a string")
    return reason[:MAX_REASON]


def setup(app: web.Application, hs: HomeServer) -> None:
    auth = hs.auth
    store = ReportStore(hs.db)

    async def report_event(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
        body = await read_json(request, allow_empty=True)
        score = body.get("score")
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, int) or not -100 <= score <= 0
        ):
            raise MatrixError(400, Codes.INVALID_PARAM, "score must be an integer between -100 and 0")
        try:
            # Only events the reporter can see may be reported (and their existence is not leaked).
            await hs.messages.get_event(requester.user_id, room_id, event_id)
        except MatrixError:
            raise not_found("Event not found") from None
        await store.add(
            "event",
            requester.user_id,
            hs.clock.time_ms(),
            room_id=room_id,
            event_id=event_id,
            reason=_reason(body),
            score=score,
        )
        log.info("event report by %s in %s", requester.user_id, room_id)
        return json_response({})

    async def report_room(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id = request.match_info["room_id"]
        body = await read_json(request, allow_empty=True)
        if await hs.events.get_room_version(room_id) is None:
            raise not_found("Unknown room")
        await store.add("room", requester.user_id, hs.clock.time_ms(), room_id=room_id, reason=_reason(body))
        log.info("room report by %s for %s", requester.user_id, room_id)
        return json_response({})

    async def report_user(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        user_id = request.match_info["user_id"]
        body = await read_json(request, allow_empty=True)
        if not user_id.startswith("@") or ":" not in user_id:
            raise MatrixError(400, Codes.INVALID_PARAM, "Invalid user ID")
        if user_id.endswith(":" + hs.server_name) and not await hs.accounts.user_exists(user_id):
            raise not_found("Unknown user")
        await store.add(
            "user", requester.user_id, hs.clock.time_ms(), target_user_id=user_id, reason=_reason(body)
        )
        log.info("user report by %s", requester.user_id)
        return json_response({})

    app.router.add_routes(
        [
            web.post(V3 + "/rooms/{room_id}/report/{event_id}", report_event),
            web.post(V3 + "/rooms/{room_id}/report", report_room),
            web.post(V3 + "/users/{user_id}/report", report_user),
        ]
    )
