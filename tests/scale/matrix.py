"""A small raw-HTTP Matrix client for scale tests: registration, sends that retry, history checks."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

CS = "/_matrix/client/v3"


async def register(base_url: str, localpart: str, password: str = "password") -> tuple[str, str]:
    """Register through the dummy UIA flow; returns (user_id, access_token).

    Both UIA steps go over one connection: UIA sessions live in the worker that began them."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as s:
        body: dict[str, Any] = {"username": localpart, "password": password}
        async with s.post(base_url + CS + "/register", json=body) as resp:
            first = await resp.json()
        if resp.status == 401:
            body["auth"] = {"type": "m.login.dummy", "session": first["session"]}
            async with s.post(base_url + CS + "/register", json=body) as resp:
                first = await resp.json()
        assert resp.status == 200, first
        return str(first["user_id"]), str(first["access_token"])


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str,
    json: Any = None,
    params: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    limit = aiohttp.ClientTimeout(total=timeout)
    async with session.request(
        method, url, json=json, params=params, headers=headers(token), timeout=limit
    ) as resp:
        try:
            return resp.status, await resp.json(content_type=None)
        except ValueError:
            return resp.status, None


@dataclass
class SendLog:
    """What one sender had acknowledged: txn ID -> event ID, plus how often it had to retry."""

    acked: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    errors: list[str] = field(default_factory=list)


async def send_until_acked(
    base_urls: list[str],
    token: str,
    room_id: str,
    txn: str,
    body: str,
    log: SendLog,
    *,
    deadline_s: float = 60.0,
) -> str:
    """PUT one message, retrying the same txn ID (on the next URL, new connection) until acknowledged."""
    path = f"{CS}/rooms/{quote(room_id)}/send/m.room.message/{txn}"
    start = time.monotonic()
    attempt = 0
    while True:
        url = base_urls[attempt % len(base_urls)] + path
        attempt += 1
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                s.put(
                    url,
                    json={"msgtype": "m.text", "body": body},
                    headers=headers(token),
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp,
            ):
                data = await resp.json(content_type=None)
                if resp.status == 200:
                    log.acked[txn] = str(data["event_id"])
                    return str(data["event_id"])
                log.errors.append(f"{resp.status} {str(data)[:80]}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.errors.append(type(e).__name__)
        log.retries += 1
        if time.monotonic() - start > deadline_s:
            raise TimeoutError(f"txn {txn} not acknowledged in {deadline_s}s: {log.errors[-5:]}")
        await asyncio.sleep(min(0.05 * attempt, 0.5))


async def continuous_sender(
    base_urls: list[str], token: str, room_id: str, name: str, stop: asyncio.Event, log: SendLog
) -> None:
    i = 0
    while not stop.is_set():
        txn = f"{name}-{i}"
        await send_until_acked(base_urls, token, room_id, txn, txn, log)
        i += 1
