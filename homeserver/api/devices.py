"""Device management: GET/PUT/DELETE /devices/{deviceId}, GET /devices, POST /delete_devices.

The area's `DeviceHandler` is shared through the app under `DEVICE_HANDLER_KEY`;
other areas get it with `get_device_handler(app, hs)` and append to its
`on_device_deleted` hooks (E2EE deletes device keys there).
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.api.register import get_uia
from homeserver.errors import bad_json, missing_param, optional_str
from homeserver.handlers.devices import DeviceHandler
from homeserver.server import HomeServer

DEVICE_HANDLER_KEY = web.AppKey("sotto.device_handler", DeviceHandler)

# Deleting devices requires the account password again (UIA).
def get_device_handler(app: web.Application, hs: HomeServer) -> DeviceHandler:
    """The app's DeviceHandler, created on first use (so setup order does not matter)."""
    if DEVICE_HANDLER_KEY not in app:
        app[DEVICE_HANDLER_KEY] = DeviceHandler(hs.accounts, hs.auth)
    return app[DEVICE_HANDLER_KEY]


def setup(app: web.Application, hs: HomeServer) -> None:
    devices = get_device_handler(app, hs)
    uia = get_uia(app, hs)
    auth = hs.auth

    async def list_devices(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        return json_response({"devices": await devices.list_devices(requester.user_id)})

    async def get_device(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        return json_response(await devices.get_device(requester.user_id, request.match_info["device_id"]))

    async def update_device(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        body = await read_json(request, allow_empty=True)
        device_id = request.match_info["device_id"]
        display_name = optional_str(body, "display_name")
        if requester.appservice is not None:
            # Application services create devices for their users this way (spec v1.17).
            now = hs.clock.time_ms()
            if await hs.accounts.upsert_device(requester.user_id, device_id, display_name, now):
                return json_response({}, status=201)
        if display_name is None:
            # Nothing to change, but an unknown device is still a 404.
            await devices.get_device(requester.user_id, device_id)
        else:
            await devices.rename_device(requester.user_id, device_id, display_name)
        return json_response({})

    async def delete_device(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        body = await read_json(request, allow_empty=True)
        device_id = request.match_info["device_id"]
        if requester.appservice is not None:  # no UIA for application services (the spec)
            await devices.delete_devices(requester.user_id, [device_id])
            return json_response({})
        result = await uia.check(
            operation=f"DELETE /devices/{device_id}",
            flows=uia.user_flows(),
            auth=body.get("auth"),
            requester=requester.user_id,
        )
        await devices.delete_devices(requester.user_id, [device_id])
        await uia.finish(result)
        return json_response({})

    async def delete_devices(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        body = await read_json(request)
        device_ids = body.get("devices")
        if device_ids is None:
            raise missing_param("devices")
        if not isinstance(device_ids, list) or not all(isinstance(d, str) for d in device_ids):
            raise bad_json("devices must be a list of device IDs")
        if requester.appservice is not None:
            await devices.delete_devices(requester.user_id, device_ids)
            return json_response({})
        result = await uia.check(
            operation="POST /delete_devices",
            flows=uia.user_flows(),
            auth=body.get("auth"),
            requester=requester.user_id,
        )
        await devices.delete_devices(requester.user_id, device_ids)
        await uia.finish(result)
        return json_response({})

    app.router.add_routes(
        [
            web.get(V3 + "/devices", list_devices),
            web.get(V3 + "/devices/{device_id}", get_device),
            web.put(V3 + "/devices/{device_id}", update_device),
            web.delete(V3 + "/devices/{device_id}", delete_device),
            web.post(V3 + "/delete_devices", delete_devices),
        ]
    )
