"""What application services may do in the Client-Server API that users may not.

Registration and login (`m.login.application_service`) need the service's `as_token` as
the access token: a service creates passwordless users in its user namespaces (no UIA,
open even when registration is closed to people) and may log in as them to get a device
of their own, e.g. for end-to-end encryption. Its exclusive alias namespaces are its own
(`refuse_claimed_alias`), and it may set its events' timestamps (`massaged_ts`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from homeserver.appservice.registration import AppService
from homeserver.errors import Codes, MatrixError, missing_param, optional_bool, optional_str
from homeserver.handlers.auth import Requester, hash_token
from homeserver.handlers.uia import user_id_from_identifier
from homeserver.handlers.users import create_account, validate_localpart
from homeserver.server import HomeServer

log = logging.getLogger(__name__)

LOGIN_TYPE = "m.login.application_service"


def appservice_of(hs: HomeServer, request: web.Request) -> AppService:
    """The service whose as_token the request carries; 401 as for any bad token otherwise."""
    token = hs.auth.extract_token(request)
    if token is None:
        raise MatrixError(401, Codes.MISSING_TOKEN, "Missing application service token")
    service = hs.appservices.for_token_hash(hash_token(token))
    if service is None:
        raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Unknown application service token", soft_logout=False)
    return service


async def register(hs: HomeServer, service: AppService, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST /register with `type: m.login.application_service`."""
    username = optional_str(body, "username")
    if not username:
        raise missing_param("username")
    user_id = validate_localpart(username.lower(), hs.server_name)
    if not service.owns_user(user_id):
        raise MatrixError(
            400, Codes.EXCLUSIVE, "This user ID is outside the application service's namespaces"
        )
    # Not another service's exclusive namespace either (overlapping registrations).
    owner = hs.appservices.user_claimed_by(user_id)
    if owner is not None and owner.id != service.id:
        raise MatrixError(400, Codes.EXCLUSIVE, "This user ID is reserved by another application service")
    user_id = await create_account(
        hs.accounts, hs.passwords, hs.server_name, username, None, hs.clock.time_ms()
    )
    log.info("application service %s registered %s", service.id, user_id)
    out: dict[str, Any] = {"user_id": user_id, "home_server": hs.server_name}
    if not optional_bool(body, "inhibit_login", False):
        out.update(
            await hs.auth.start_session(
                user_id,
                optional_str(body, "device_id"),
                optional_str(body, "initial_device_display_name"),
                refreshable=False,
            )
        )
    return out


async def login(hs: HomeServer, service: AppService, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST /login with `type: m.login.application_service`: a session for a user of the
    service's namespaces, without a password."""
    user_id = user_id_from_identifier(body, hs.server_name)
    if not service.owns_user(user_id) or not user_id.endswith(":" + hs.server_name):
        raise MatrixError(
            403, Codes.EXCLUSIVE, "This user ID is outside the application service's namespaces"
        )
    user = await hs.accounts.get_user(user_id)
    if user is None:
        raise MatrixError(403, Codes.FORBIDDEN, "The application service has not registered this user")
    if user["deactivated"]:
        raise MatrixError(403, Codes.USER_DEACTIVATED, "This account has been deactivated")
    session = await hs.auth.start_session(
        user_id,
        optional_str(body, "device_id"),
        optional_str(body, "initial_device_display_name"),
        refreshable=False,
    )
    log.info("application service %s logged in as %s", service.id, user_id)
    return {"user_id": user_id, **session, "home_server": hs.server_name}


def refuse_claimed_alias(hs: HomeServer, requester: Requester, alias: str) -> None:
    """400 M_EXCLUSIVE for creating an alias in another's exclusive alias namespace."""
    owner = hs.appservices.alias_claimed_by(alias) if hs.appservices else None
    if owner is not None and owner.id != requester.appservice:
        raise MatrixError(400, Codes.EXCLUSIVE, "This room alias is reserved by an application service")


# The largest origin_server_ts a client could read back exactly (JSON's safe integers).
_MAX_TS = 2**53 - 1


def massaged_ts(request: web.Request, requester: Requester) -> int | None:
    """An application service's `?ts=` (the event's origin_server_ts) on send and state
    PUTs; None for anyone else, who cannot set it (the parameter is ignored, as in Synapse)."""
    if requester.appservice is None:
        return None  # first: people's sends (the hot path) never parse the query string
    raw = request.query.get("ts")
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) > _MAX_TS:
        raise MatrixError(400, Codes.INVALID_PARAM, "ts must be a timestamp in milliseconds")
    return int(raw)


async def local_user_exists(hs: HomeServer, user_id: str) -> bool:
    """Whether a local user exists, once the application services covering the ID have
    been asked (a bridge registers its users when they are first looked up)."""
    queries = hs.appservice_queries
    return await (queries.user_exists(user_id) if queries is not None else hs.accounts.user_exists(user_id))
