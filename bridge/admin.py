"""The servers this one sends to, for server admins, in Synapse's admin API shape (the
synapse-admin web UI's federation page uses it):

    GET  /_synapse/admin/v1/federation/destinations[?from&limit&order_by&dir]
    GET  /_synapse/admin/v1/federation/destinations/{destination}
    POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection
    GET  /_synapse/admin/v1/federation/destinations/{destination}/rooms[?from&limit&dir]

A destination is listed once a transaction reached it or failed to. Its rooms are those
whose events it has acknowledged, each with the position (`stream_ordering`) of the newest
one; `last_successful_stream_ordering` is the newest of those (null before any). Synapse
also lists rooms whose events are still queued; here a room appears once one is delivered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from homeserver.api.admin import V1, dir_backwards, require_admin
from homeserver.api.http import json_response, query_int
from homeserver.errors import Codes, MatrixError, invalid_param, not_found
from homeserver.server import HomeServer

if TYPE_CHECKING:
    from bridge.service import Federation

PATH = V1 + "/federation/destinations"
ORDERS = ("destination", "retry_last_ts", "retry_interval", "failure_ts", "last_successful_stream_ordering")


def setup(app: web.Application, hs: HomeServer, fed: Federation) -> None:
    store = fed.store

    async def listing(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        offset = query_int(request, "from", 0)
        limit = query_int(request, "limit", 100, minimum=1)
        order_by = request.query.get("order_by", "destination")
        if order_by not in ORDERS:
            raise invalid_param(f"order_by must be one of {', '.join(ORDERS)}")
        found, total = await store.list_destinations(offset, limit, order_by, dir_backwards(request))
        body: dict[str, object] = {"destinations": [d.admin_json() for d in found], "total": total}
        if offset + len(found) < total:
            body["next_token"] = str(offset + len(found))
        return json_response(body)

    async def details(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        found = await store.get_destination(request.match_info["destination"])
        if found is None:
            raise not_found("Unknown destination")
        return json_response(found.admin_json())

    async def reset_connection(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        destination = request.match_info["destination"]
        found = await store.get_destination(destination)
        if found is None:
            raise not_found("Unknown destination")
        if not found.failures:
            raise MatrixError(
                400, Codes.UNKNOWN, "The retry timing does not need to be reset for this destination."
            )
        await fed.queue.reset(destination)
        return json_response({})

    async def rooms(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        destination = request.match_info["destination"]
        if await store.get_destination(destination) is None:
            raise not_found("Unknown destination")
        offset = query_int(request, "from", 0)
        limit = query_int(request, "limit", 100, minimum=1)
        found, total = await store.destination_rooms(destination, offset, limit, dir_backwards(request))
        body: dict[str, object] = {
            "rooms": [{"room_id": room_id, "stream_ordering": pos} for room_id, pos in found],
            "total": total,
        }
        if offset + len(found) < total:
            body["next_token"] = str(offset + len(found))
        return json_response(body)

    app.router.add_routes(
        [
            web.get(PATH, listing),
            web.get(PATH + "/{destination}/rooms", rooms),
            web.get(PATH + "/{destination}", details),
            web.post(PATH + "/{destination}/reset_connection", reset_connection),
        ]
    )
