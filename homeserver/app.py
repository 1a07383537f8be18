"""The aiohttp application: middlewares, every API area's routes, and lifecycle.

Each area module exposes `setup(app, hs)`, which builds that area's handlers
and registers its routes. Resources (the database, background tasks) live in
`cleanup_ctx`, so startup and shutdown are symmetric.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from bridge import service as federation
from homeserver.api import (
    account,
    account_data,
    admin,
    admin_lookups,
    admin_media,
    admin_quarantine,
    admin_redact,
    admin_registration_tokens,
    admin_reports,
    admin_rooms,
    admin_users,
    appservice,
    consent,
    delayed_events,
    devices,
    directory,
    discovery,
    email_unsubscribe,
    events_api,
    filters,
    guard,
    keys,
    knock,
    login,
    media,
    metrics,
    moderation,
    oauth,
    openid,
    presence,
    preview,
    profile,
    push_rules,
    register,
    relations,
    rendezvous,
    report,
    room_keys,
    room_lookups,
    room_upgrade,
    rooms,
    search,
    server_notices,
    shared_secret_registration,
    sliding_sync,
    spaces,
    sso,
    sync,
    tags,
    terms_fallback,
    thirdparty,
    thread_subscriptions,
    threepids,
    to_device,
    user_directory,
    voip,
)
from homeserver.api.middleware import error_middleware, forwarded_middleware
from homeserver.api.routing import index_by_version
from homeserver.config import Config
from homeserver.server import HomeServer, build_homeserver
from homeserver.storage.migrate import migrate

log = logging.getLogger(__name__)

HS_KEY = web.AppKey("homeserver", HomeServer)

AreaSetup = Callable[[web.Application, HomeServer], None]

# Order matters only for overlapping paths; more specific areas first.
AREAS: list[AreaSetup] = [
    guard.setup,
    discovery.setup,
    register.setup,
    login.setup,
    sso.setup,
    terms_fallback.setup,
    oauth.setup,
    rendezvous.setup,
    account.setup,
    threepids.setup,
    email_unsubscribe.setup,
    devices.setup,
    filters.setup,
    profile.setup,
    rooms.setup,
    events_api.setup,
    delayed_events.setup,
    directory.setup,
    account_data.setup,
    keys.setup,
    to_device.setup,
    room_keys.setup,
    media.setup,
    preview.setup,
    push_rules.setup,
    relations.setup,
    presence.setup,
    tags.setup,
    report.setup,
    user_directory.setup,
    search.setup,
    room_upgrade.setup,
    knock.setup,
    spaces.setup,
    room_lookups.setup,
    openid.setup,
    thirdparty.setup,
    voip.setup,
    appservice.setup,
    sync.setup,
    sliding_sync.setup,
    thread_subscriptions.setup,  # after sliding_sync.setup: adds its MSC4308 extension
    federation.setup,
    guard.setup_federation,
    admin.setup,
    admin_lookups.setup,
    admin_media.setup,
    admin_quarantine.setup,
    admin_redact.setup,
    admin_registration_tokens.setup,
    admin_reports.setup,
    admin_rooms.setup,
    admin_users.setup,
    shared_secret_registration.setup,
    server_notices.setup,
    consent.setup,  # after federation.setup: guards its remote joins, invites and knocks
    moderation.setup,
    metrics.setup,
]


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    hs = app[HS_KEY]
    await migrate(hs.db)
    await hs.db.load_stream_position()
    for service in hs.background:
        await service.start()
    yield
    for service in reversed(hs.background):
        await service.stop()
    hs.notifier.close()
    await hs.db.close()
    await hs.tracing.close()


async def _wake_long_polls(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for in-flight requests: end long-polls now.
    app[HS_KEY].notifier.close()


def create_app(config: Config, hs: HomeServer | None = None) -> web.Application:
    hs = hs or build_homeserver(config)
    middlewares = (
        [forwarded_middleware, error_middleware] if config.listener.x_forwarded else [error_middleware]
    )
    traced = hs.tracing.middleware()
    if traced is not None:
        middlewares.insert(0, traced)  # outermost: the span covers the whole request
    app = web.Application(middlewares=middlewares, client_max_size=config.limits.max_request_bytes)
    app[HS_KEY] = hs
    for setup in AREAS:
        setup(app, hs)
    index_by_version(app.router)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_wake_long_polls)
    return app
