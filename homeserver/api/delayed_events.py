"""Delayed events (MSC4140, unstable; homeserver/handlers/delayed_events.py does the work):

Under /_matrix/client/unstable/org.matrix.msc4140:
    GET  /delayed_events                      the user's scheduled events
    GET  /delayed_events/{delayId}            one of them
    POST /delayed_events/{delayId}/{action}   cancel, restart or send (no access token needed)
    POST /delayed_events/{delayId}            {"action": ...}: the earlier form of the same

Scheduling is a query parameter of /send and /state (homeserver/api/events_api.py).
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import UNSTABLE, json_response, read_json
from homeserver.api.register import client_address
from homeserver.handlers.delayed_events import FEATURE, DelayedEvents
from homeserver.server import HomeServer

DELAYED_EVENTS_KEY = web.AppKey("sotto.delayed_events", DelayedEvents)
BASE = UNSTABLE + "/" + FEATURE + "/delayed_events"


def get_delayed_events(app: web.Application, hs: HomeServer) -> DelayedEvents:
    """The app's delayed events, created (and its timer registered) on first use."""
    if DELAYED_EVENTS_KEY not in app:
        delayed = app[DELAYED_EVENTS_KEY] = DelayedEvents(hs, hs.config.delayed_events)
        hs.background.append(delayed)
        hs.creator.listeners.append(delayed.on_state)
    return app[DELAYED_EVENTS_KEY]


def setup(app: web.Application, hs: HomeServer) -> None:
    delayed = get_delayed_events(app, hs)

    async def list_events(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        return json_response({"delayed_events": await delayed.of_user(requester.user_id)})

    async def get_event(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        return json_response(await delayed.get(requester.user_id, request.match_info["delay_id"]))

    async def act(request: web.Request) -> web.Response:
        await delayed.act(
            request.match_info["delay_id"], request.match_info["action"], client_address(request)
        )
        return json_response({})

    async def act_in_body(request: web.Request) -> web.Response:
        body = await read_json(request)
        await delayed.act(request.match_info["delay_id"], body.get("action"), client_address(request))
        return json_response({})

    app.router.add_routes(
        [
            web.get(BASE, list_events),
            web.get(BASE + "/{delay_id}", get_event),
            web.post(BASE + "/{delay_id}", act_in_body),
            web.post(BASE + "/{delay_id}/{action}", act),
        ]
    )
