"""/thirdparty/*: third-party networks bridged by application services.

The protocols are those the configured services list in their registrations (`protocols`);
each lookup is passed to the services that bridge the protocol
(`/_matrix/app/v1/thirdparty/...`) and their answers are merged. A protocol no service
lists is unknown (404); without services the list is empty and lookups across all
protocols find nothing, which clients (Element's room directory) take as "no bridges".
A service that fails or does not answer within ten seconds is left out of the answer.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from aiohttp import web

from homeserver.api.http import V3, json_response
from homeserver.appservice.registration import AppService
from homeserver.errors import not_found
from homeserver.server import HomeServer


def setup(app: web.Application, hs: HomeServer) -> None:
    queries = hs.appservice_queries

    def bridging(protocol: str | None) -> list[AppService]:
        return [
            s
            for s in hs.appservices.services
            if s.url is not None and (protocol in s.protocols if protocol is not None else s.protocols)
        ]

    async def ask(asked: list[tuple[AppService, str]], params: dict[str, str]) -> list[Any]:
        """Each (service, path under /_matrix/app/v1/thirdparty/)'s answer, asked at once."""
        if queries is None or not asked:
            return []
        return list(await asyncio.gather(*(queries.thirdparty(s, path, params) for s, path in asked)))

    async def describe(wanted: list[tuple[AppService, str]]) -> dict[str, Any]:
        """The protocols' metadata from the (service, protocol) pairs that bridge them."""
        answers = await ask([(s, f"protocol/{quote(p, safe='')}") for s, p in wanted], {})
        out: dict[str, Any] = {}
        for (service, protocol), answer in zip(wanted, answers, strict=True):
            if isinstance(answer, dict):
                merge_protocol(out, protocol, with_instance_ids(service, answer))
        return out

    async def protocols(request: web.Request) -> web.Response:
        await hs.auth.get_requester(request)
        return json_response(await describe([(s, p) for s in bridging(None) for p in s.protocols]))

    async def protocol(request: web.Request) -> web.Response:
        await hs.auth.get_requester(request)
        name = request.match_info["protocol"]
        out = await describe([(s, name) for s in bridging(name)])
        if name not in out:
            raise not_found("Unknown protocol")
        return json_response(out[name])

    def lookup(kind: str) -> Any:
        async def by_protocol(request: web.Request) -> web.Response:
            await hs.auth.get_requester(request)
            name = request.match_info["protocol"]
            services = bridging(name)
            if not services:
                raise not_found("Unknown protocol")
            path = f"{kind}/{quote(name, safe='')}"
            return json_response(merged(await ask([(s, path) for s in services], dict(request.query))))

        async def across(request: web.Request) -> web.Response:
            await hs.auth.get_requester(request)
            asked = [(s, kind) for s in bridging(None)]
            return json_response(merged(await ask(asked, dict(request.query))))

        return by_protocol, across

    location_of, locations = lookup("location")
    user_of, users = lookup("user")
    app.router.add_routes(
        [
            web.get(V3 + "/thirdparty/protocols", protocols),
            web.get(V3 + "/thirdparty/protocol/{protocol}", protocol),
            web.get(V3 + "/thirdparty/location/{protocol}", location_of),
            web.get(V3 + "/thirdparty/user/{protocol}", user_of),
            web.get(V3 + "/thirdparty/location", locations),
            web.get(V3 + "/thirdparty/user", users),
        ]
    )


def merged(answers: list[Any]) -> list[dict[str, Any]]:
    """The services' result lists, concatenated (anything that is not a list of objects dropped)."""
    return [
        item for answer in answers if isinstance(answer, list) for item in answer if isinstance(item, dict)
    ]


def with_instance_ids(service: AppService, answer: dict[str, Any]) -> dict[str, Any]:
    """The protocol's instances with the `instance_id` the homeserver adds: "<service>|<network>",
    what a client passes as publicRooms' `third_party_instance_id`."""
    instances = answer.get("instances")
    if isinstance(instances, list):
        for instance in instances:
            if isinstance(instance, dict) and isinstance(instance.get("network_id"), str):
                instance["instance_id"] = f"{service.id}|{instance['network_id']}"
    return answer


def merge_protocol(out: dict[str, Any], name: str, answer: dict[str, Any]) -> None:
    """One protocol's metadata; a second service bridging it adds its instances."""
    if name not in out:
        out[name] = answer
        return
    instances = answer.get("instances")
    if isinstance(instances, list):
        out[name].setdefault("instances", []).extend(i for i in instances if isinstance(i, dict))
