"""The ceiling: a bare aiohttp server answering the Matrix send endpoint and nothing else.

It parses the JSON body, checks that a bearer token is present and answers with a
random event ID, on uvloop, in one process. Whatever the load generator gets from it
is the most any Python aiohttp server can do on this machine for the same requests.

It also answers `/sync`: at once without `since`, else it parks the request for its
`timeout` and answers an empty sync. The memory scenario run against it gives the floor:
what aiohttp alone holds per parked long-poll, before any homeserver state.

    python -m bench.bare_server PORT
"""

from __future__ import annotations

import asyncio
import os
import sys

import orjson
import uvloop
from aiohttp import web


async def send(request: web.Request) -> web.Response:
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return web.json_response({"errcode": "M_MISSING_TOKEN"}, status=401)
    content = orjson.loads(await request.read())
    if not isinstance(content, dict):
        return web.json_response({"errcode": "M_NOT_JSON"}, status=400)
    body = orjson.dumps({"event_id": "$" + os.urandom(16).hex()})
    return web.Response(body=body, content_type="application/json")


async def sync(request: web.Request) -> web.Response:
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return web.json_response({"errcode": "M_MISSING_TOKEN"}, status=401)
    if "since" in request.query:
        await asyncio.sleep(int(request.query.get("timeout", "0")) / 1000)
    return web.Response(body=b'{"next_batch":"s1"}', content_type="application/json")


async def create_room(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(
        body=orjson.dumps({"room_id": "!" + os.urandom(8).hex() + ":bare"}), content_type="application/json"
    )


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"{}", content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_put("/_matrix/client/v3/rooms/{room}/send/{type}/{txn}", send)
    app.router.add_get("/_matrix/client/v3/sync", sync)
    app.router.add_post("/_matrix/client/v3/createRoom", create_room)
    app.router.add_post("/_matrix/client/v3/join/{room}", ok)
    app.router.add_get("/health", ok)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
