"""Room aliases (/directory/room), alias listing, room directory visibility and publicRooms."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api.http import V3, json_response, query_int, read_json
from homeserver.appservice.accounts import refuse_claimed_alias
from homeserver.errors import Codes, MatrixError, forbidden, require_str
from homeserver.handlers.power import can_send_state
from homeserver.server import HomeServer
from homeserver.storage.schema import rooms as rooms_table


def _check_alias(alias: str, server_name: str) -> None:
    if not alias.startswith("#") or ":" not in alias or len(alias.encode()) > 255:
        raise MatrixError(400, Codes.INVALID_PARAM, "Invalid room alias")


def setup(app: web.Application, hs: HomeServer) -> None:
    auth = hs.auth

    async def get_alias(request: web.Request) -> web.Response:
        alias = request.match_info["alias"]
        _check_alias(alias, hs.server_name)
        found = await hs.aliases.get(alias)
        if found is None:
            raise MatrixError(404, Codes.NOT_FOUND, f"Room alias {alias} not found")
        return json_response({"room_id": found[0], "servers": [hs.server_name]})

    async def put_alias(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        alias = request.match_info["alias"]
        _check_alias(alias, hs.server_name)
        if not alias.endswith(":" + hs.server_name):
            raise MatrixError(400, Codes.INVALID_PARAM, "Alias must be on this server")
        body = await read_json(request)
        room_id = require_str(body, "room_id")
        refuse_claimed_alias(hs, requester, alias)
        if await hs.events.get_room_version(room_id) is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        if not await hs.aliases.create(alias, room_id, requester.user_id):
            raise MatrixError(409, Codes.UNKNOWN, "Room alias already exists")
        return json_response({})

    async def delete_alias(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        alias = request.match_info["alias"]
        found = await hs.aliases.get(alias)
        if found is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Room alias not found")
        _, creator = found
        service = hs.appservices.get(requester.appservice) if requester.appservice else None
        managed = service is not None and service.owns_alias(alias)
        if creator != requester.user_id and not requester.is_admin and not managed:
            raise forbidden("You did not create this alias")
        await hs.aliases.delete(alias)
        return json_response({})

    async def room_aliases(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id = request.match_info["room_id"]
        await hs.messages.visible_window(room_id, requester.user_id)
        return json_response({"aliases": await hs.aliases.for_room(room_id)})

    async def get_visibility(request: web.Request) -> web.Response:
        room_id = request.match_info["room_id"]
        from sqlalchemy import select

        async with hs.db.read() as conn:
            row = (
                await conn.execute(select(rooms_table.c.is_public).where(rooms_table.c.room_id == room_id))
            ).first()
        if row is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown room")
        return json_response({"visibility": "public" if row[0] else "private"})

    async def put_visibility(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id = request.match_info["room_id"]
        body = await read_json(request)
        visibility = body.get("visibility", "public")
        if visibility not in ("public", "private"):
            raise MatrixError(400, Codes.INVALID_PARAM, "visibility must be public or private")
        m = await hs.events.get_membership(room_id, requester.user_id)
        if m is None or m[0] != "join":
            raise forbidden("You must be in the room")
        # Publishing speaks for the room: it takes the power to set its canonical alias.
        if not requester.is_admin and not await can_send_state(
            hs.events, room_id, requester.user_id, "m.room.canonical_alias"
        ):
            raise forbidden("You do not have permission to publish this room")
        await hs.events.set_room_public(room_id, visibility == "public")
        return json_response({})

    async def public_rooms(request: web.Request) -> web.Response:
        body: dict[str, Any] = {}
        if request.method == "POST":
            await auth.get_requester(request)
            body = await read_json(request, allow_empty=True)
            limit = body.get("limit", 100)
            since = body.get("since")
            search = (body.get("filter") or {}).get("generic_search_term")
        else:
            limit = query_int(request, "limit", 100)
            since = request.query.get("since")
            search = None
        from sqlalchemy import select

        async with hs.db.read() as conn:
            ids = [
                r[0]
                for r in await conn.execute(
                    select(rooms_table.c.room_id)
                    .where(rooms_table.c.is_public.is_(True))
                    .order_by(rooms_table.c.created_ts)
                )
            ]
        chunk = []
        for room_id in ids:
            state = await hs.events.get_current_state(
                room_id,
                types=[
                    "m.room.name",
                    "m.room.topic",
                    "m.room.canonical_alias",
                    "m.room.avatar",
                    "m.room.join_rules",
                    "m.room.history_visibility",
                    "m.room.guest_access",
                    "m.room.create",
                ],
            )
            members = await hs.events.get_room_members(room_id)

            def get(type_: str, key: str, state: Any = state) -> Any:
                s = state.get((type_, ""))
                return s.event.content.get(key) if s else None

            entry: dict[str, Any] = {
                "room_id": room_id,
                "num_joined_members": len(members),
                "world_readable": get("m.room.history_visibility", "history_visibility") == "world_readable",
                "guest_can_join": get("m.room.guest_access", "guest_access") == "can_join",
                "join_rule": get("m.room.join_rules", "join_rule") or "public",
            }
            for key, (t, k) in {
                "name": ("m.room.name", "name"),
                "topic": ("m.room.topic", "topic"),
                "canonical_alias": ("m.room.canonical_alias", "alias"),
                "avatar_url": ("m.room.avatar", "url"),
                "room_type": ("m.room.create", "type"),
            }.items():
                value = get(t, k)
                if isinstance(value, str):
                    entry[key] = value
            if search and isinstance(search, str):
                hay = " ".join(str(entry.get(k, "")) for k in ("name", "topic", "canonical_alias")).lower()
                if search.lower() not in hay:
                    continue
            chunk.append(entry)
        chunk.sort(key=lambda e: -int(e["num_joined_members"]))
        start = int(since) if isinstance(since, str) and since.isdigit() else 0
        limit = int(limit) if isinstance(limit, int) and limit > 0 else 100
        page = chunk[start : start + limit]
        out: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(chunk)}
        if start + limit < len(chunk):
            out["next_batch"] = str(start + limit)
        if start > 0:
            out["prev_batch"] = str(max(0, start - limit))
        return json_response(out)

    app.router.add_routes(
        [
            web.get(V3 + "/directory/room/{alias}", get_alias),
            web.put(V3 + "/directory/room/{alias}", put_alias),
            web.delete(V3 + "/directory/room/{alias}", delete_alias),
            web.get(V3 + "/rooms/{room_id}/aliases", room_aliases),
            web.get(V3 + "/directory/list/room/{room_id}", get_visibility),
            web.put(V3 + "/directory/list/room/{room_id}", put_visibility),
            web.get(V3 + "/publicRooms", public_rooms),
            web.post(V3 + "/publicRooms", public_rooms),
        ]
    )
