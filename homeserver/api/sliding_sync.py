"""POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync: sliding sync (MSC4186).

`pos` and `timeout` are query parameters, as Synapse and the clients have them; the body
holds the lists, room subscriptions and extensions (homeserver.sync.sliding).
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.devices import get_device_handler
from homeserver.api.http import UNSTABLE, json_response, query_int, read_json
from homeserver.api.keys import e2ee_services
from homeserver.errors import invalid_param
from homeserver.handlers.cs_services import services
from homeserver.server import HomeServer
from homeserver.storage.sliding_positions import SlidingPositionStore
from homeserver.sync.sliding.config import parse_request
from homeserver.sync.sliding.connections import Connections
from homeserver.sync.sliding.extensions import SlidingExtensions
from homeserver.sync.sliding.handler import SlidingSyncHandler
from homeserver.sync.sliding.room_data import RoomData
from homeserver.sync.sliding.rooms import RoomList
from homeserver.sync.sliding.sticky import StickyExtension

PATH = UNSTABLE + "/org.matrix.simplified_msc3575/sync"
PRESENCE_VALUES = ("online", "offline", "unavailable")
SLIDING_SYNC_KEY = web.AppKey("sotto.sliding_sync", SlidingSyncHandler)


def build_handler(app: web.Application, hs: HomeServer) -> SlidingSyncHandler:
    e2ee = e2ee_services(app, hs)
    # Several processes share the database (workers, or servers behind a load balancer): a
    # connection's next request may reach any of them.
    store = SlidingPositionStore(hs.db) if hs.db.shared and not hs.db.sole_writer else None
    if store is not None:
        get_device_handler(app, hs).on_device_deleted.append(store.delete_devices)
    cs = services(app, hs)
    extensions = SlidingExtensions(
        e2ee.to_device,
        e2ee.keys,
        e2ee.device_lists,
        hs.account_data,
        hs.receipts,
        hs.typing,
        cs.push,
        StickyExtension(hs.events, hs.clock, hs.accounts.erased) if hs.config.sticky_events.enabled else None,
    )
    return SlidingSyncHandler(
        hs.db,
        hs.notifier,
        hs.account_data,
        RoomList(hs.db, hs.events, hs.account_data, hs.sync.reads, hs.sync.memo),
        RoomData(hs.events, hs.sync.reads, hs.sync, hs.clock, cs.relations.bundle),
        extensions,
        cs.push,
        hs.sync.park_hooks,
        Connections(hs.clock, store),
    )


def setup(app: web.Application, hs: HomeServer) -> None:
    max_timeout = hs.config.limits.max_sync_timeout_ms
    handler = app[SLIDING_SYNC_KEY] = build_handler(app, hs)

    async def sliding_sync(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        body = parse_request(await read_json(request, allow_empty=True))
        set_presence = request.query.get("set_presence")
        if set_presence is not None and set_presence not in PRESENCE_VALUES:
            raise invalid_param("set_presence must be online, offline or unavailable")
        timeout = query_int(request, "timeout", 0, maximum=max_timeout)
        pos = request.query.get("pos") or None
        return json_response(await handler.sync(requester, body, pos, timeout, set_presence))

    app.router.add_routes([web.post(PATH, sliding_sync)])
