"""Discovery and capabilities: /versions, .well-known, /capabilities, and small
endpoints clients call on startup that have a well-defined "nothing here" answer."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api.http import UNSTABLE, V3, json_response
from homeserver.errors import not_found
from homeserver.events import KNOWN_ROOM_VERSIONS
from homeserver.handlers.delayed_events import FEATURE as DELAYED_EVENTS
from homeserver.handlers.rooms import SUPPORTED_ROOM_VERSIONS
from homeserver.handlers.thread_subscriptions import FEATURE as THREAD_SUBSCRIPTIONS
from homeserver.server import HomeServer
from homeserver.storage import sticky_events

# Spec versions whose required endpoints for our supported feature set we implement.
# v1.11 brings authenticated media (/_matrix/client/v1/media), which clients then use;
# v1.12 the account locking API; v1.13 room reports and requestToken's error codes; v1.14
# user reports; v1.15 /room_summary (matrix-js-sdk uses the stable path from here on);
# v1.16 /sync's use_state_after, `format=event` on state lookups, the m.create event in
# invite state, custom profile fields and m.profile_fields; v1.17 application services'
# device masquerading and device management (tests/integration/test_appservice.py); v1.18
# invite blocking, redactions through /send, the admin lock and suspend API; v1.19
# /mutual_rooms and `unsigned.replaces_state`. (tests/integration/test_spec_versions.py)
SPEC_VERSIONS = [
    "r0.6.1",
    "v1.1",
    "v1.2",
    "v1.3",
    "v1.4",
    "v1.5",
    "v1.6",
    "v1.7",
    "v1.8",
    "v1.9",
    "v1.10",
    "v1.11",
    "v1.12",
    "v1.13",
    "v1.14",
    "v1.15",
    "v1.16",
    "v1.17",
    "v1.18",
    "v1.19",
]
# Every profile field may be set (custom ones and m.tz too: handlers/profile.py).
PROFILE_FIELDS = {"enabled": True}


# Sliding sync (MSC4186, homeserver.sync.sliding): Element X looks for this before using it.
# MSC4222 (/sync's state_after, spec v1.16): matrix-js-sdk asks for it on every sync.
UNSTABLE_FEATURES = {"org.matrix.simplified_msc3575": True, "org.matrix.msc4222": True}


def setup(app: web.Application, hs: HomeServer) -> None:
    unstable_features = {
        **UNSTABLE_FEATURES,
        DELAYED_EVENTS: hs.config.delayed_events.enabled,
        # QR code sign-in's rendezvous (api/rendezvous.py) comes with the OAuth 2.0 API.
        "org.matrix.msc4108": hs.config.oauth.enabled,
        sticky_events.FEATURE: hs.config.sticky_events.enabled,
        # MSC4306 thread subscriptions (as Synapse's msc4306_enabled).
        THREAD_SUBSCRIPTIONS: hs.config.thread_subscriptions.enabled,
    }

    async def versions(request: web.Request) -> web.Response:
        return json_response({"versions": SPEC_VERSIONS, "unstable_features": unstable_features})

    well_known: dict[str, Any] = {"m.homeserver": {"base_url": hs.config.baseurl}}
    if hs.config.rtc.transports:
        # Where Element Call finds its SFU (MSC4143; clients that predate rtc/transports).
        well_known["org.matrix.msc4143.rtc_foci"] = hs.config.rtc.transports

    async def well_known_client(request: web.Request) -> web.Response:
        return json_response(well_known)

    async def rtc_transports(request: web.Request) -> web.Response:
        await hs.auth.get_requester(request)
        return json_response({"rtc_transports": hs.config.rtc.transports})

    async def well_known_support(request: web.Request) -> web.Response:
        support = hs.config.support
        if not support.contacts and not support.support_page:
            raise not_found("No support information")
        body: dict[str, Any] = {}
        if support.contacts:
            body["contacts"] = support.contacts
        if support.support_page:
            body["support_page"] = support.support_page
        return json_response(body)

    async def capabilities(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        # Omitted, as the spec asks, for those who can do neither.
        moderation = {"m.account_moderation": {"lock": True, "suspend": True}} if requester.is_admin else {}
        available = {v: "stable" for v in SUPPORTED_ROOM_VERSIONS}
        available.update(
            {v: "stable" for v in KNOWN_ROOM_VERSIONS if v not in available and v.isdigit() and int(v) < 10}
        )
        return json_response(
            {
                "capabilities": {
                    "m.room_versions": {"default": hs.config.default_room_version, "available": available},
                    "m.change_password": {"enabled": True},
                    "m.set_displayname": {"enabled": True},
                    "m.set_avatar_url": {"enabled": True},
                    "m.3pid_changes": {"enabled": hs.config.email.enabled},
                    "m.get_login_token": {"enabled": True},
                    "m.profile_fields": PROFILE_FIELDS,
                    **moderation,
                }
            }
        )

    app.router.add_routes(
        [
            web.get("/_matrix/client/versions", versions),
            web.get("/.well-known/matrix/client", well_known_client),
            web.get("/.well-known/matrix/support", well_known_support),
            web.get(V3 + "/capabilities", capabilities),
            web.get(UNSTABLE + "/org.matrix.msc4143/rtc/transports", rtc_transports),
        ]
    )
