"""Redacting a user's events in bulk (server admins only), in Synapse's shape:

POST /_synapse/admin/v1/user/{userId}/redact
    {"rooms": [...], "reason"?, "limit"?, "use_admin"?, "after_ts"?, "before_ts"?}
    -> {"redact_id": ...}: the job runs in the background (homeserver/handlers/admin_redact.py)
GET  /_synapse/admin/v1/user/redact_status/{redactId}
    -> {"status": "scheduled"|"active"|"complete"|"failed", "failed_redactions": {eventId: error}}
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api.admin import V1, require_admin
from homeserver.api.http import json_response, read_json
from homeserver.handlers.admin_redact import RedactJob, UserRedactor
from homeserver.server import HomeServer

REDACTOR_KEY = web.AppKey("sotto.admin_redact", UserRedactor)


def setup(app: web.Application, hs: HomeServer) -> None:
    redactor = UserRedactor(hs.events, hs.creator, hs.accounts, hs.server_name)
    app[REDACTOR_KEY] = redactor

    async def redact_user(request: web.Request) -> web.Response:
        requester = await require_admin(hs, request)
        job = RedactJob.parse(request.match_info["user_id"], await read_json(request))
        return json_response({"redact_id": await redactor.start(requester.user_id, job)})

    async def redact_status(request: web.Request) -> web.Response:
        await require_admin(hs, request)
        return json_response(redactor.status(request.match_info["redact_id"]))

    async def stop_jobs(_app: web.Application) -> None:
        await redactor.stop()

    app.on_shutdown.append(stop_jobs)
    app.router.add_routes(
        [
            web.post(V1 + "/user/{user_id}/redact", redact_user),
            web.get(V1 + "/user/redact_status/{redact_id}", redact_status),
        ]
    )
