"""Reading and clearing the reports users made (server admins only), in the shape of
Synapse's admin API so its tools read them:

    GET    /_synapse/admin/v1/event_reports        from, limit, dir (b: newest first),
                                                   user_id, room_id (parts of the IDs)
    GET    /_synapse/admin/v1/event_reports/{id}   one report, with the event's JSON
    DELETE /_synapse/admin/v1/event_reports/{id}
    ... and the same for room_reports and user_reports.

Each listed report carries the room's name and canonical alias as they are now (null for a
room this server no longer has); event reports also the reported event's sender.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api.admin import V1, require_admin
from homeserver.api.http import json_response, query_int
from homeserver.errors import Codes, MatrixError, not_found
from homeserver.handlers.admin import room_json
from homeserver.server import HomeServer
from homeserver.storage.admin import AdminStore
from homeserver.storage.reports import Report, ReportStore

MAX_PAGE = 1000
# Path segment -> the report kind stored.
KINDS = {"event_reports": "event", "room_reports": "room", "user_reports": "user"}


def _report_id(request: web.Request) -> int:
    raw = request.match_info["report_id"]
    if not raw.isdigit():
        raise MatrixError(400, Codes.INVALID_PARAM, "The report ID must be a positive integer")
    return int(raw)


def setup(app: web.Application, hs: HomeServer) -> None:
    store = ReportStore(hs.db)
    rooms = AdminStore(hs.db, hs.server_name)

    async def describe(found: list[Report]) -> list[dict[str, Any]]:
        room_ids = {r.room_id for r in found if r.room_id}
        summaries = (
            {s.room_id: room_json(s) for s in await rooms.room_summaries(room_ids)} if room_ids else {}
        )
        event_ids = [r.event_id for r in found if r.event_id]
        events = await hs.events.get_events(event_ids) if event_ids else {}
        out = []
        for r in found:
            room = summaries.get(r.room_id or "", {})
            item: dict[str, Any] = {
                "id": r.id,
                "received_ts": r.ts,
                "user_id": r.reporter,
                "reason": r.reason,
            }
            if r.kind in ("event", "room"):
                item.update(
                    room_id=r.room_id,
                    name=room.get("name"),
                    canonical_alias=room.get("canonical_alias"),
                )
            if r.kind == "room":
                item["topic"] = room.get("topic")
            if r.kind == "event":
                stored = events.get(r.event_id or "")
                item.update(
                    event_id=r.event_id, score=r.score, sender=stored.event.sender if stored else None
                )
            if r.kind == "user":
                item["target_user_id"] = r.target_user_id
            out.append(item)
        return out

    def reports_of(segment: str) -> tuple[Any, Any, Any]:
        kind = KINDS[segment]

        async def listing(request: web.Request) -> web.Response:
            await require_admin(hs, request)
            offset = query_int(request, "from", 0)
            limit = min(query_int(request, "limit", 100, minimum=1), MAX_PAGE)
            direction = request.query.get("dir", "b")
            if direction not in ("f", "b"):
                raise MatrixError(400, Codes.INVALID_PARAM, "dir must be f or b")
            found, total = await store.page(
                kind,
                offset,
                limit,
                newest_first=direction == "b",
                reporter_like=request.query.get("user_id"),
                room_like=request.query.get("room_id"),
            )
            body: dict[str, Any] = {segment: await describe(found), "total": total}
            if offset + len(found) < total:
                body["next_token"] = offset + len(found)
            return json_response(body)

        async def one(request: web.Request) -> web.Response:
            await require_admin(hs, request)
            report = await store.get(kind, _report_id(request))
            if report is None:
                raise not_found("Report not found")
            (item,) = await describe([report])
            if kind == "event":
                stored = await hs.events.get_event(report.event_id or "")
                item["event_json"] = stored.event.pdu if stored is not None else None
            return json_response(item)

        async def remove(request: web.Request) -> web.Response:
            await require_admin(hs, request)
            if not await store.delete(kind, _report_id(request)):
                raise not_found("Report not found")
            return json_response({})

        return listing, one, remove

    routes = []
    for segment in KINDS:
        listing, one, remove = reports_of(segment)
        path = f"{V1}/{segment}"
        routes += [
            web.get(path, listing),
            web.get(path + "/{report_id}", one),
            web.delete(path + "/{report_id}", remove),
        ]
    app.router.add_routes(routes)
