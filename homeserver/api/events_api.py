"""Room events: send, state, redact, history (/messages, /context, /event), members,
typing, receipts and read markers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver import jsonutil
from homeserver.api.delayed_events import get_delayed_events
from homeserver.api.http import V3, json_response, query_int, read_json
from homeserver.appservice.accounts import massaged_ts
from homeserver.errors import Codes, MatrixError, forbidden
from homeserver.handlers import sticky_events
from homeserver.handlers.auth import Requester, refuse_if_suspended
from homeserver.handlers.client_format import client_event
from homeserver.handlers.delayed_events import DELAY_PARAM
from homeserver.handlers.messages import MessageHandler, Window
from homeserver.handlers.redaction import send_redaction
from homeserver.handlers.shadow_ban import fake_event_id
from homeserver.server import HomeServer
from homeserver.storage.events import TxnInfo
from homeserver.sync.filter import EventFilter

MAX_STATE_KEY_BYTES = 255


def setup(app: web.Application, hs: HomeServer) -> None:
    auth = hs.auth
    creator = hs.creator
    messages = hs.messages

    async def _require_joined(room_id: str, user_id: str) -> None:
        await creator.require_joined(room_id, user_id, cached=False)

    async def _refuse_if_suspended(requester: Requester, redacts: Any = None) -> None:
        """Suspended accounts may redact their own events, and send nothing else."""
        if not requester.suspended:
            return
        if isinstance(redacts, str):
            original = await hs.events.get_event(redacts)
            if original is not None and original.event.sender == requester.user_id:
                return
        refuse_if_suspended(requester)

    sticky_on = hs.config.sticky_events.enabled

    async def schedule(
        request: web.Request,
        requester: Requester,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None,
        sticky_ms: int | None = None,
    ) -> web.Response:
        """A /send or /state with a delay: the event is scheduled (MSC4140), not sent."""
        delayed = get_delayed_events(app, hs)
        delay = delayed.parse_delay(request.query[DELAY_PARAM])
        txn_id = request.match_info.get("txn_id")
        delay_id = await delayed.schedule(
            requester.user_id,
            requester.device_id,
            room_id,
            event_type,
            content,
            state_key,
            delay,
            txn_id,
            sticky_ms,
        )
        return json_response({"delay_id": delay_id})

    async def send(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        room_id = request.match_info["room_id"]
        content = await read_json(request, allow_empty=False)
        if requester.suspended:
            redaction = request.match_info["event_type"] == "m.room.redaction"
            await _refuse_if_suspended(requester, content.get("redacts") if redaction else None)
        if requester.shadow_banned:
            await _require_joined(room_id, requester.user_id)
            return json_response({"event_id": fake_event_id()})
        # MSC4354: a sticky message (the parameter is ignored while sticky events are off).
        sticky_ms = sticky_events.parse_duration(request.query) if sticky_on else None
        if DELAY_PARAM in request.query:
            return await schedule(
                request, requester, room_id, request.match_info["event_type"], content, None, sticky_ms
            )
        txn = TxnInfo(requester.user_id, requester.device_id, request.match_info["txn_id"])
        # The membership is checked where the event is created: with several workers that
        # may be the room's owner (homeserver.forwarding), which has the room cached.
        event, _ = await creator.create_and_send(
            room_id=room_id,
            type=request.match_info["event_type"],
            sender=requester.user_id,
            content=content,
            txn=txn,
            check_joined=True,
            ts=massaged_ts(request, requester),
            sticky_ms=sticky_ms,
        )
        return json_response({"event_id": event.event_id})

    async def put_state(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        room_id = request.match_info["room_id"]
        state_key = request.match_info.get("state_key", "")
        if len(state_key.encode()) > MAX_STATE_KEY_BYTES:
            raise MatrixError(400, Codes.INVALID_PARAM, "state_key too long")
        type_ = request.match_info["event_type"]
        content = await read_json(request, allow_empty=False)
        refuse_if_suspended(requester)
        if requester.shadow_banned and type_ != "m.room.member":
            await _require_joined(room_id, requester.user_id)
            return json_response({"event_id": fake_event_id()})
        if DELAY_PARAM in request.query:
            return await schedule(request, requester, room_id, type_, content, state_key)
        await _require_joined(room_id, requester.user_id)
        if (
            type_ == "m.room.member"
            and content.get("membership") == "invite"
            and hs.rooms.is_local_user(state_key)
        ):
            await hs.rooms.invite_permission.check(state_key)
            # As /invite (profiles.include_profile_data_on_invite), unless the client set them.
            content = {**await hs.rooms.invitee_profile(state_key), **content}
        existing = await hs.events.get_current_state(room_id, [(type_, state_key)])
        prev = existing.get((type_, state_key))
        if prev is not None and prev.event.sender == requester.user_id and prev.event.content == content:
            # Setting identical state again is idempotent and returns the existing event.
            return json_response({"event_id": prev.event.event_id})
        event, _ = await creator.create_and_send(
            room_id=room_id,
            type=type_,
            sender=requester.user_id,
            content=content,
            state_key=state_key,
            ts=massaged_ts(request, requester),
        )
        return json_response({"event_id": event.event_id})

    async def get_state_event(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        stored = await messages.state_event(
            requester.user_id,
            request.match_info["room_id"],
            request.match_info["event_type"],
            request.match_info.get("state_key", ""),
        )
        if request.query.get("format") == "event":
            return json_response(client_event(stored, hs.clock.time_ms()))
        return json_response(stored.event.content)

    async def get_state(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        return json_response(await messages.room_state(requester.user_id, request.match_info["room_id"]))

    async def redact(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id = request.match_info["room_id"]
        body = await read_json(request, allow_empty=True)
        await _require_joined(room_id, requester.user_id)
        target = request.match_info["event_id"]
        await _refuse_if_suspended(requester, target)
        if requester.shadow_banned:
            return json_response({"event_id": fake_event_id()})
        reason = body.get("reason")
        txn = TxnInfo(requester.user_id, requester.device_id, "redact:" + request.match_info["txn_id"])
        event = await send_redaction(
            hs.events,
            creator,
            room_id,
            requester.user_id,
            target,
            reason if isinstance(reason, str) else None,
            txn,
        )
        return json_response({"event_id": event.event_id})

    async def get_messages(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        return json_response(await read_messages(messages, request, requester.user_id, requester.device_id))

    async def context(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        return json_response(await read_context(messages, request, requester.user_id, requester.device_id))

    async def get_event(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        return json_response(
            await messages.get_event(
                requester.user_id, request.match_info["room_id"], request.match_info["event_id"]
            )
        )

    async def get_event_by_id(request: web.Request) -> web.Response:
        """The deprecated GET /events/{eventId}: /rooms/{roomId}/event/{eventId} without the
        room. Unknown and unreadable events look the same (404), as the spec has it."""
        requester = await auth.get_requester(request)
        event_id = request.match_info["event_id"]
        stored = await hs.events.get_event(event_id)
        if stored is None:
            raise MatrixError(404, Codes.NOT_FOUND, "Event not found")
        try:
            event = await messages.get_event(requester.user_id, stored.event.room_id, event_id)
        except MatrixError as e:
            if e.status != 403:
                raise
            raise MatrixError(404, Codes.NOT_FOUND, "Event not found") from None
        return json_response(event)

    async def members(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request, allow_guest=True)
        chunk = await messages.members(
            requester.user_id,
            request.match_info["room_id"],
            request.query.get("membership"),
            request.query.get("not_membership"),
        )
        return json_response({"chunk": chunk})

    async def joined_members(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id = request.match_info["room_id"]
        await _require_joined(room_id, requester.user_id)
        state = await hs.events.get_current_state(room_id, types=["m.room.member"])
        # Absent profile fields are left out, not sent as null.
        joined = {
            s.event.state_key: {
                key: s.event.content[field]
                for key, field in (("display_name", "displayname"), ("avatar_url", "avatar_url"))
                if isinstance(s.event.content.get(field), str)
            }
            for s in state.values()
            if s.event.membership == "join"
        }
        return json_response({"joined": joined})

    async def typing(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id = request.match_info["room_id"]
        if request.match_info["user_id"] != requester.user_id:
            raise forbidden("Cannot set typing for another user")
        body = await read_json(request)
        is_typing = body.get("typing")
        if not isinstance(is_typing, bool):
            raise MatrixError(400, Codes.BAD_JSON, "typing must be a boolean")
        timeout = body.get("timeout", 30_000)
        if is_typing and (not isinstance(timeout, int) or isinstance(timeout, bool)):
            raise MatrixError(400, Codes.BAD_JSON, "timeout must be an integer")
        await _require_joined(room_id, requester.user_id)
        if not requester.shadow_banned:
            await hs.typing.set_typing(room_id, requester.user_id, is_typing, int(timeout or 0))
        return json_response({})

    async def receipt(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id = request.match_info["room_id"]
        receipt_type = request.match_info["receipt_type"]
        event_id = request.match_info["event_id"]
        body = await read_json(request, allow_empty=True)
        await _require_joined(room_id, requester.user_id)
        thread_id = body.get("thread_id")
        if thread_id is not None and not isinstance(thread_id, str):
            raise MatrixError(400, Codes.INVALID_PARAM, "thread_id must be a string")
        if receipt_type == "m.fully_read":
            await _set_fully_read(requester.user_id, room_id, event_id)
        else:
            await hs.receipts.post_receipt(requester.user_id, room_id, receipt_type, event_id, thread_id)
        return json_response({})

    async def _set_fully_read(user_id: str, room_id: str, event_id: str) -> None:
        stored = await hs.events.get_event(event_id)
        if stored is None or stored.event.room_id != room_id:
            raise MatrixError(404, Codes.NOT_FOUND, "Unknown event")
        await hs.account_data.set(user_id, room_id, "m.fully_read", {"event_id": event_id})
        hs.notifier.notify(users=[user_id])

    async def read_markers(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        room_id = request.match_info["room_id"]
        body = await read_json(request, allow_empty=True)
        await _require_joined(room_id, requester.user_id)
        if isinstance(body.get("m.fully_read"), str):
            await _set_fully_read(requester.user_id, room_id, body["m.fully_read"])
        for rtype in ("m.read", "m.read.private"):
            if isinstance(body.get(rtype), str):
                await hs.receipts.post_receipt(requester.user_id, room_id, rtype, body[rtype])
        return json_response({})

    room = V3 + "/rooms/{room_id}"
    app.router.add_routes(
        [
            web.put(room + "/send/{event_type}/{txn_id}", send),
            web.put(room + "/state/{event_type}", put_state),
            web.put(room + "/state/{event_type}/", put_state),
            web.put(room + "/state/{event_type}/{state_key}", put_state),
            web.get(room + "/state/{event_type}", get_state_event),
            web.get(room + "/state/{event_type}/", get_state_event),
            web.get(room + "/state/{event_type}/{state_key}", get_state_event),
            web.get(room + "/state", get_state),
            web.put(room + "/redact/{event_id}/{txn_id}", redact),
            web.get(room + "/messages", get_messages),
            web.get(room + "/context/{event_id}", context),
            web.get(room + "/event/{event_id}", get_event),
            web.get(V3 + "/events/{event_id}", get_event_by_id),
            web.get(room + "/members", members),
            web.get(room + "/joined_members", joined_members),
            web.put(room + "/typing/{user_id}", typing),
            web.post(room + "/receipt/{receipt_type}/{event_id}", receipt),
            web.post(room + "/read_markers", read_markers),
        ]
    )


async def read_messages(
    messages: MessageHandler,
    request: web.Request,
    user_id: str,
    device_id: str | None,
    window: Window | None = None,
) -> dict[str, Any]:
    """/messages with the request's parameters (`window`: see MessageHandler.messages)."""
    event_filter, lazy = room_event_filter(request)
    return await messages.messages(
        user_id,
        device_id,
        request.match_info["room_id"],
        request.query.get("from"),
        request.query.get("to"),
        request.query.get("dir", "b"),
        query_int(request, "limit", 10, minimum=0),
        event_filter,
        lazy,
        window=window,
    )


async def read_context(
    messages: MessageHandler,
    request: web.Request,
    user_id: str,
    device_id: str | None,
    window: Window | None = None,
) -> dict[str, Any]:
    """/context with the request's parameters (`window`: see MessageHandler.messages)."""
    return await messages.context(
        user_id,
        device_id,
        request.match_info["room_id"],
        request.match_info["event_id"],
        query_int(request, "limit", 10),
        *room_event_filter(request),
        window=window,
    )


def room_event_filter(request: web.Request) -> tuple[EventFilter, bool]:
    """The `filter` query parameter of /messages and /context (a RoomEventFilter as JSON),
    and whether it asks for lazy-loaded members."""
    raw = request.query.get("filter")
    if not raw:
        return EventFilter(), False
    try:
        parsed = jsonutil.loads(raw)
    except ValueError:
        raise MatrixError(400, Codes.BAD_JSON, "filter is not JSON") from None
    return EventFilter.parse(parsed), bool(isinstance(parsed, dict) and parsed.get("lazy_load_members"))
