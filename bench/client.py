"""The load generator's Matrix client: raw aiohttp requests, no SDK, nothing cached.

Every server under test (Sotto, Synapse, the bare aiohttp ceiling) sees exactly the
same requests. One `Client` is one user with one access token; sessions are shared
and unbounded so the generator, not a connection limit, decides the concurrency.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

CS = "/_matrix/client/v3"
_txn = itertools.count()


class RequestFailed(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {str(body)[:200]}")
        self.status = status


def new_session(limit: int = 0, force_close: bool = False, timeout_s: float = 180) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, force_close=force_close, ttl_dns_cache=None)
    return aiohttp.ClientSession(
        connector=connector,
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


@dataclass
class Client:
    session: aiohttp.ClientSession
    base_url: str
    user_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        data = orjson.dumps(body) if body is not None else None
        headers = self.headers
        if data is not None:
            headers = {**headers, "Content-Type": "application/json"}
        async with self.session.request(
            method, self.base_url + CS + path, data=data, params=params, headers=headers
        ) as resp:
            raw = await resp.read()
            parsed = orjson.loads(raw) if raw else {}
            if resp.status != 200:
                raise RequestFailed(resp.status, parsed)
            return parsed

    async def create_room(self, **body: Any) -> str:
        body.setdefault("preset", "public_chat")
        return str((await self.call("POST", "/createRoom", body))["room_id"])

    async def join(self, room_id: str, via: list[str] | None = None) -> None:
        path = f"/join/{quote(room_id)}"
        if via:
            path += "?" + "&".join("server_name=" + quote(s) for s in via)
        await self.call("POST", path, {})

    async def send(self, room_id: str, body: str, txn: str | None = None) -> str:
        txn = txn or f"b{next(_txn)}-{time.monotonic_ns()}"
        content = {"msgtype": "m.text", "body": body}
        path = f"/rooms/{quote(room_id)}/send/m.room.message/{txn}"
        return str((await self.call("PUT", path, content))["event_id"])

    async def put_state(self, room_id: str, event_type: str, state_key: str, content: dict[str, Any]) -> str:
        path = f"/rooms/{quote(room_id)}/state/{quote(event_type)}/{quote(state_key)}"
        return str((await self.call("PUT", path, content))["event_id"])

    async def sync(self, since: str | None = None, timeout_ms: int = 0, filter: str | None = None) -> Any:
        params = {"timeout": str(timeout_ms)}
        if since:
            params["since"] = since
        if filter:
            params["filter"] = filter
        return await self.call("GET", "/sync", params=params)


# Keep long-poll responses small and equal on both servers.
SYNC_FILTER = orjson.dumps(
    {
        "room": {"timeline": {"limit": 50}, "state": {"lazy_load_members": True}},
        "presence": {"types": []},
        "account_data": {"types": []},
    }
).decode()


# Bursts (federation transactions carry up to 50 events) must not be cut off by a limited timeline.
BURST_SYNC_FILTER = orjson.dumps(
    {
        "room": {"timeline": {"limit": 2000}, "state": {"lazy_load_members": True}},
        "presence": {"types": []},
        "account_data": {"types": []},
    }
).decode()


def timeline_event_ids(sync: Any, room_id: str) -> list[str]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id)
    if not room:
        return []
    return [e["event_id"] for e in room.get("timeline", {}).get("events", [])]


async def register_sotto(session: aiohttp.ClientSession, base_url: str, localpart: str) -> Client:
    """Register through Sotto's dummy UIA flow (both steps on one connection: UIA state is per worker)."""
    async with new_session(limit=1) as one:
        body: dict[str, Any] = {"username": localpart, "password": "benchpass", "inhibit_login": False}
        async with one.post(base_url + CS + "/register", json=body) as resp:
            data = await resp.json()
        if resp.status == 401:
            body["auth"] = {"type": "m.login.dummy", "session": data["session"]}
            async with one.post(base_url + CS + "/register", json=body) as resp:
                data = await resp.json()
        if resp.status != 200:
            raise RequestFailed(resp.status, data)
    return Client(session, base_url, str(data["user_id"]), str(data["access_token"]))


async def gather_limited(n: int, limit: int, make: Any) -> list[Any]:
    """Run make(i) for i in range(n) with at most `limit` in flight; results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            return await make(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds of values given in seconds."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pct(p: float) -> float:
        k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
        return round(ordered[k] * 1000, 3)

    return {
        "n": len(ordered),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
    }
