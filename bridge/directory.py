"""The public room directory over federation.

Inbound: `GET` and `POST /_matrix/federation/v1/publicRooms` answer other servers with
this server's published rooms (the same list its own clients see) when
room_directory.allow_public_rooms_over_federation is on; off (the default, as Synapse's),
403 M_FORBIDDEN. Outbound: a client's `publicRooms?server=other` asks that server, with
`GET` (paging only) or `POST` (with a search term), and passes its answer on after
checking its shape.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bridge.client import FederationClient, FederationError, RemoteError
from homeserver.errors import Codes, MatrixError
from homeserver.handlers.room_directory import DirectoryQuery, RoomDirectory

PATH = "/_matrix/federation/v1/publicRooms"


class FederatedDirectory:
    def __init__(self, directory: RoomDirectory, client: FederationClient, *, serve: bool = False) -> None:
        self.directory = directory
        self.client = client
        # room_directory.allow_public_rooms_over_federation: off, other servers get 403.
        self.serve = serve

    def install(self) -> None:
        self.directory.remote = self.remote_public_rooms

    def routes(self) -> list[tuple[str, str, Any]]:
        def check_served(origin: str) -> None:
            if not self.serve:
                raise MatrixError(403, Codes.FORBIDDEN, f"Federation denied with {origin}")

        async def get(request: web.Request, origin: str, content: Any) -> Any:
            check_served(origin)
            raw = request.query.get("limit", "0")
            if not raw.isdigit():
                raise MatrixError(400, Codes.INVALID_PARAM, "limit must be a non-negative integer")
            body: dict[str, Any] = {
                "limit": int(raw),
                "since": request.query.get("since"),
                "include_all_networks": request.query.get("include_all_networks") == "true",
                "third_party_instance_id": request.query.get("third_party_instance_id"),
            }
            return await self.directory.local(DirectoryQuery.from_body(body))

        async def post(request: web.Request, origin: str, content: Any) -> Any:
            check_served(origin)
            if not isinstance(content, dict):
                raise MatrixError(400, Codes.BAD_JSON, "Request body must be a JSON object")
            return await self.directory.local(DirectoryQuery.from_body(content))

        return [("GET", PATH, get), ("POST", PATH, post)]

    async def remote_public_rooms(self, server: str, query: DirectoryQuery) -> dict[str, Any]:
        try:
            if query.search or query.include_all_networks or query.third_party_instance_id is not None:
                body = await self.client.post(server, PATH, query.as_body())
            else:
                params = {"limit": str(query.limit)}
                if query.since is not None:
                    params["since"] = query.since
                body = await self.client.get(server, PATH, query=params)
        except RemoteError as e:
            raise MatrixError(502, Codes.UNKNOWN, f"The server answered {e.status}") from None
        except FederationError:
            raise MatrixError(502, Codes.UNKNOWN, "Could not reach the server") from None
        if not isinstance(body, dict) or not isinstance(body.get("chunk"), list):
            raise MatrixError(502, Codes.UNKNOWN, "Malformed room directory from the server")
        body["chunk"] = [
            r for r in body["chunk"] if isinstance(r, dict) and isinstance(r.get("room_id"), str)
        ]
        return body
