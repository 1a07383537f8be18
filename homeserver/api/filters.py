"""Sync filters: POST /user/{userId}/filter and GET /user/{userId}/filter/{filterId}.

Uploaded filters are checked against the spec's filter schema once, here, so
/sync can trust what it reads back.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api.http import V3, json_response, read_json
from homeserver.errors import bad_json, forbidden, not_found
from homeserver.server import HomeServer

_EVENT_FILTER_LISTS = ("types", "not_types", "senders", "not_senders")
_ROOM_EVENT_FILTER_BOOLS = (
    "contains_url",
    "include_redundant_members",
    "lazy_load_members",
    "unread_thread_notifications",
)


def _check_str_list(value: Any, where: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_json(f"{where} must be a list of strings")


def _check_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_json(f"{where} must be an object")
    return value


def _check_event_filter(value: Any, where: str, *, room_event: bool = False) -> None:
    f = _check_object(value, where)
    for key in _EVENT_FILTER_LISTS:
        if key in f:
            _check_str_list(f[key], f"{where}.{key}")
    if "limit" in f and (not isinstance(f["limit"], int) or isinstance(f["limit"], bool)):
        raise bad_json(f"{where}.limit must be an integer")
    if room_event:
        for key in ("rooms", "not_rooms"):
            if key in f:
                _check_str_list(f[key], f"{where}.{key}")
        for key in _ROOM_EVENT_FILTER_BOOLS:
            if key in f and not isinstance(f[key], bool):
                raise bad_json(f"{where}.{key} must be a boolean")


def validate_filter(body: dict[str, Any]) -> None:
    """Raise 400 M_BAD_JSON unless `body` has the shape of the spec's Filter."""
    if "event_fields" in body:
        _check_str_list(body["event_fields"], "event_fields")
    if "event_format" in body and body["event_format"] not in ("client", "federation"):
        raise bad_json("event_format must be 'client' or 'federation'")
    for key in ("presence", "account_data"):
        if key in body:
            _check_event_filter(body[key], key)
    if "room" in body:
        room = _check_object(body["room"], "room")
        for key in ("rooms", "not_rooms"):
            if key in room:
                _check_str_list(room[key], f"room.{key}")
        if "include_leave" in room and not isinstance(room["include_leave"], bool):
            raise bad_json("room.include_leave must be a boolean")
        for key in ("timeline", "state", "ephemeral", "account_data"):
            if key in room:
                _check_event_filter(room[key], f"room.{key}", room_event=True)


def setup(app: web.Application, hs: HomeServer) -> None:
    auth = hs.auth

    async def create_filter(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        if request.match_info["user_id"] != requester.user_id:
            raise forbidden("Cannot create filters for other users")
        body = await read_json(request)
        validate_filter(body)
        return json_response({"filter_id": await hs.filters.create(requester.user_id, body)})

    async def get_filter(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        if request.match_info["user_id"] != requester.user_id:
            raise forbidden("Cannot get filters for other users")
        found = await hs.filters.get(requester.user_id, request.match_info["filter_id"])
        if found is None:
            raise not_found("No such filter")
        return json_response(found)

    app.router.add_routes(
        [
            web.post(V3 + "/user/{user_id}/filter", create_filter),
            web.get(V3 + "/user/{user_id}/filter/{filter_id}", get_filter),
        ]
    )
