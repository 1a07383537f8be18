"""A tiny raw-HTTP Matrix client for tests that check exact status codes and bodies."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp


class RawClient:
    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, token: str | None = None, user_id: str = ""
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.token = token
        self.user_id = user_id

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Any]:
        if not path.startswith("/_matrix") and not path.startswith("/."):
            path = "/_matrix/client/v3" + path
        async with self.session.request(
            method, self.base_url + path, json=json, params=params, data=data, headers=self._headers()
        ) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = await resp.text()
            return resp.status, body

    async def ok(self, method: str, path: str, json: Any = None, params: dict[str, str] | None = None) -> Any:
        status, body = await self.request(method, path, json=json, params=params)
        assert status == 200, (method, path, status, body)
        return body

    async def create_room(self, **body: Any) -> str:
        return str((await self.ok("POST", "/createRoom", json=body))["room_id"])

    async def room_with(self, *members: RawClient, **body: Any) -> str:
        """A public room this user creates and the `members` join."""
        room = await self.create_room(**{"preset": "public_chat", **body})
        for member in members:
            assert (await member.join(room))[0] == 200
        return room

    async def send(self, room_id: str, body: str, txn: str) -> str:
        out = await self.ok(
            "PUT",
            f"/rooms/{quote(room_id)}/send/m.room.message/{txn}",
            json={"msgtype": "m.text", "body": body},
        )
        return str(out["event_id"])

    async def join(self, room: str) -> tuple[int, Any]:
        return await self.request("POST", f"/join/{quote(room)}", json={})

    async def sync(self, since: str | None = None, timeout: int = 0, **params: str) -> Any:
        p = {"timeout": str(timeout), **params}
        if since:
            p["since"] = since
        return await self.ok("GET", "/sync", params=p)
