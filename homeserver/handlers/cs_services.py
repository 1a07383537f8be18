"""Composition root for the Client-Server modules beyond the core (media, push, relations,
presence, directory, search ...).

Their API modules share one set of handlers per application. `services(app, hs)` builds
it on first use, stores it on the app under a typed key, and wires it into the core
exactly once: an event listener on `hs.creator`, a /sync extension, and background
services.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from homeserver.handlers.media import MediaRepository
from homeserver.server import HomeServer
from homeserver.storage.media import MediaStore


@dataclass
class ClientServerServices:
    media: MediaRepository


CS_KEY = web.AppKey("client_server_services", ClientServerServices)


def build_services(hs: HomeServer) -> ClientServerServices:
    config = hs.config
    media = MediaRepository(
        MediaStore(hs.db),
        hs.clock,
        hs.server_name,
        config.resolve_path(config.media_store_path),
        config.limits.max_upload_bytes,
    )
    return ClientServerServices(media=media)


def services(app: web.Application, hs: HomeServer) -> ClientServerServices:
    existing = app.get(CS_KEY)
    if existing is not None:
        return existing
    svc = build_services(hs)
    app[CS_KEY] = svc
    return svc
