"""Push rules (/pushrules), /notifications and pushers."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.devices import get_device_handler
from homeserver.api.http import V3, json_response, query_int, read_json
from homeserver.errors import Codes, MatrixError, bad_json
from homeserver.handlers.cs_services import services
from homeserver.server import HomeServer


def _scope(request: web.Request) -> None:
    if request.match_info.get("scope", "global") != "global":
        raise MatrixError(400, Codes.INVALID_PARAM, "Only the global scope is supported")


def setup(app: web.Application, hs: HomeServer) -> None:
    push = services(app, hs).push
    # A device's push gateways go with it (logout, deletion), as in Synapse: a phone that was
    # logged out must stop receiving notifications.
    get_device_handler(app, hs).on_device_deleted.append(push.pushers.delete_for_devices)
    auth = hs.auth

    async def get_all(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        return json_response((await push.ruleset(requester.user_id)).to_json())

    async def get_scope(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        _scope(request)
        return json_response((await push.ruleset(requester.user_id)).to_json()["global"])

    async def get_rule(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        _scope(request)
        m = request.match_info
        return json_response(await push.get_rule(requester.user_id, m["kind"], m["rule_id"]))

    async def put_rule(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        _scope(request)
        body = await read_json(request)
        m = request.match_info
        await push.put_rule(
            requester.user_id,
            m["kind"],
            m["rule_id"],
            body,
            request.query.get("before"),
            request.query.get("after"),
        )
        return json_response({})

    async def delete_rule(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        _scope(request)
        m = request.match_info
        await push.delete_rule(requester.user_id, m["kind"], m["rule_id"])
        return json_response({})

    async def get_field(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        _scope(request)
        m = request.match_info
        rule = await push.get_rule(requester.user_id, m["kind"], m["rule_id"])
        field = m["field"]
        return json_response({field: rule.get(field, [] if field == "actions" else True)})

    async def put_field(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        _scope(request)
        body = await read_json(request)
        m = request.match_info
        if m["field"] == "enabled":
            enabled = body.get("enabled")
            if not isinstance(enabled, bool):
                raise bad_json("enabled must be a boolean")
            await push.set_rule_field(requester.user_id, m["kind"], m["rule_id"], enabled=enabled)
        else:
            if "actions" not in body:
                raise MatrixError(400, Codes.MISSING_PARAM, "actions is required")
            await push.set_rule_field(requester.user_id, m["kind"], m["rule_id"], actions=body["actions"])
        return json_response({})

    async def notifications(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        return json_response(
            await push.notifications(
                requester.user_id,
                request.query.get("from"),
                query_int(request, "limit", 20, minimum=1, maximum=100),
                request.query.get("only"),
            )
        )

    async def get_pushers(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        return json_response({"pushers": await push.get_pushers(requester.user_id)})

    async def set_pusher(request: web.Request) -> web.Response:
        requester = await auth.get_requester(request)
        await push.set_pusher(requester.user_id, requester.device_id, await read_json(request))
        return json_response({})

    rules = V3 + "/pushrules"
    rule = rules + "/{scope}/{kind}/{rule_id}"
    app.router.add_routes(
        [
            web.get(rules, get_all),
            web.get(rules + "/", get_all),
            web.get(rules + "/{scope}", get_scope),
            web.get(rules + "/{scope}/", get_scope),
            web.get(rule, get_rule),
            web.put(rule, put_rule),
            web.delete(rule, delete_rule),
            web.get(rule + "/{field:(?:enabled|actions)}", get_field),
            web.put(rule + "/{field:(?:enabled|actions)}", put_field),
            web.get(V3 + "/notifications", notifications),
            web.get(V3 + "/pushers", get_pushers),
            web.post(V3 + "/pushers/set", set_pusher),
        ]
    )
