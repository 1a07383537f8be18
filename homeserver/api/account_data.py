"""Placeholder: being implemented (accounts area)."""

from __future__ import annotations

from aiohttp import web

from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    return None
