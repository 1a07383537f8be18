"""/keys/*: upload, query, claim, changes, cross-signing keys and signatures.

Also the composition of the E2EE area: `e2ee_services(app, hs)` builds the stores and
handlers once and shares them with /sendToDevice, /room_keys, /sync and (for its
hooks) federation, and registers the device-deletion cleanup.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from homeserver.api.devices import get_device_handler
from homeserver.api.http import UNSTABLE, V3, json_response, read_json
from homeserver.api.register import get_uia
from homeserver.handlers.device_lists import DeviceListHandler
from homeserver.handlers.e2e_keys import (
    CrossSigningHandler,
    E2EKeysHandler,
    parse_claim,
    parse_query,
    parse_stream_token,
    parse_timeout,
    parse_upload,
)
from homeserver.handlers.key_backup import KeyBackupHandler
from homeserver.handlers.to_device import ToDeviceHandler
from homeserver.server import HomeServer
from homeserver.storage.device_lists import DeviceListStore
from homeserver.storage.e2e_keys import E2EKeyStore
from homeserver.storage.key_backup import KeyBackupStore
from homeserver.storage.to_device import ToDeviceStore
from homeserver.sync.e2ee_extension import E2EESyncExtension


@dataclass(slots=True)
class E2EEServices:
    keys: E2EKeysHandler
    cross_signing: CrossSigningHandler
    device_lists: DeviceListHandler
    to_device: ToDeviceHandler
    backup: KeyBackupHandler
    sync: E2EESyncExtension


E2EE_KEY = web.AppKey("sotto.e2ee", E2EEServices)


def e2ee_services(app: web.Application, hs: HomeServer) -> E2EEServices:
    """The app's E2EE handlers, built on first use (so area setup order does not matter)."""
    if E2EE_KEY in app:
        return app[E2EE_KEY]
    key_store = E2EKeyStore(hs.db)
    device_lists = DeviceListHandler(DeviceListStore(hs.db), hs.notifier)
    keys = E2EKeysHandler(key_store, device_lists, hs.server_name, hs.clock.time_ms)
    to_device = ToDeviceHandler(
        ToDeviceStore(hs.db), hs.accounts, hs.notifier, hs.server_name, hs.clock.time_ms
    )
    services = E2EEServices(
        keys=keys,
        cross_signing=CrossSigningHandler(key_store, device_lists, get_uia(app, hs)),
        device_lists=device_lists,
        to_device=to_device,
        backup=KeyBackupHandler(KeyBackupStore(hs.db)),
        sync=E2EESyncExtension(keys, to_device, device_lists),
    )
    app[E2EE_KEY] = services
    hs.sync_extensions.append(services.sync)
    deleted_hooks = get_device_handler(app, hs).on_device_deleted
    deleted_hooks.append(to_device.on_devices_deleted)
    deleted_hooks.append(keys.on_devices_deleted)
    return services


def setup(app: web.Application, hs: HomeServer) -> None:
    e2ee = e2ee_services(app, hs)
    auth = hs.auth

    async def upload(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        body = await read_json(request)
        return json_response(await e2ee.keys.upload(requester, parse_upload(body, requester)))

    async def query(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        body = await read_json(request)
        return json_response(await e2ee.keys.query(requester, parse_query(body), parse_timeout(body)))

    async def claim(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        body = await read_json(request)
        return json_response(await e2ee.keys.claim(requester, parse_claim(body), parse_timeout(body)))

    async def changes(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        from_stream = parse_stream_token(request.query.get("from"), "from")
        to_stream = parse_stream_token(request.query.get("to"), "to")
        to_stream = min(to_stream, hs.db.current_stream_id)
        memberships = await hs.events.get_memberships_for_user(requester.user_id)
        joined = [room_id for room_id, membership, _, _ in memberships if membership == "join"]
        return json_response(await e2ee.keys.changes(requester, from_stream, to_stream, joined))

    async def device_signing_upload(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        body = await read_json(request)
        await e2ee.cross_signing.upload_keys(requester, body)
        return json_response({})

    async def signatures_upload(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        body = await read_json(request)
        return json_response(await e2ee.cross_signing.upload_signatures(requester, body))

    routes = [
        web.post(V3 + "/keys/upload", upload),
        # r0 clients may still name the device in the path; the token decides which device it is.
        web.post(V3 + "/keys/upload/{device_id}", upload),
        web.post(V3 + "/keys/query", query),
        web.post(V3 + "/keys/claim", claim),
        web.get(V3 + "/keys/changes", changes),
    ]
    for prefix in (V3, UNSTABLE):
        routes.append(web.post(prefix + "/keys/device_signing/upload", device_signing_upload))
        routes.append(web.post(prefix + "/keys/signatures/upload", signatures_upload))
    app.router.add_routes(routes)
