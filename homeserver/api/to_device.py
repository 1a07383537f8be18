"""PUT /sendToDevice/{eventType}/{txnId}."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.api.keys import e2ee_services
from homeserver.handlers.to_device import parse_messages
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    to_device = e2ee_services(app, hs).to_device

    async def send_to_device(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        body = await read_json(request)
        await to_device.send(
            requester, request.match_info["event_type"], request.match_info["txn_id"], parse_messages(body)
        )
        return json_response({})

    app.router.add_routes([web.put(V3 + "/sendToDevice/{event_type}/{txn_id}", send_to_device)])
