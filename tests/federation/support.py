"""Federation test support: a test CA, Sotto servers with TLS federation listeners, helpers.

Every server gets a certificate for 127.0.0.1 issued by one throwaway CA, and trusts that CA
(plus loopback, which federation otherwise refuses). A server's name is
`127.0.0.1:<federation port>`, as federation requires.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import trustme

from bridge.service import FEDERATION_KEY, Federation
from homeserver.events import Event, auth_types_for_event, build_event
from tests.support.server import RunningServer, free_port, run_server


@dataclass
class CertAuthority:
    ca: trustme.CA
    ca_file: str
    cert_file: str
    key_file: str


def make_ca(directory: str) -> CertAuthority:
    os.makedirs(directory, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    ca_file = os.path.join(directory, "ca.pem")
    cert_file = os.path.join(directory, "server.pem")
    key_file = os.path.join(directory, "server.key")
    ca.cert_pem.write_to_path(ca_file)
    cert.private_key_pem.write_to_path(key_file)
    with open(cert_file, "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return CertAuthority(ca, ca_file, cert_file, key_file)


def federation_overrides(ca: CertAuthority, fed_port: int, **extra: Any) -> dict[str, Any]:
    fed = {
        "enabled": True,
        "bind_address": "127.0.0.1",
        "port": fed_port,
        "tls_certificate_path": ca.cert_file,
        "tls_private_key_path": ca.key_file,
        "verify_certificates": True,
        "custom_ca_file": ca.ca_file,
        "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
        "retry_min_ms": 200,
        "retry_max_ms": 1000,
    }
    fed.update(extra)
    return {"server_name": f"127.0.0.1:{fed_port}", "federation": fed}


@asynccontextmanager
async def fed_server(
    tmp_path: str, ca: CertAuthority, fed_port: int | None = None, **overrides: Any
) -> AsyncIterator[RunningServer]:
    port = fed_port or free_port()
    os.makedirs(tmp_path, exist_ok=True)
    fed_extra = overrides.pop("federation", {})
    async with run_server(tmp_path, **federation_overrides(ca, port, **fed_extra), **overrides) as srv:
        yield srv


def federation_of(srv: RunningServer) -> Federation:
    return srv.runner.app[FEDERATION_KEY]


class Client:
    """A minimal Matrix client over aiohttp (real HTTP against a running server)."""

    def __init__(self, base_url: str, user_id: str, token: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.user_id = user_id
        self.token = token
        self.session = session
        self.since: str | None = None
        self._txn = 0

    @classmethod
    async def login(cls, srv: RunningServer, localpart: str, session: aiohttp.ClientSession) -> Client:
        body = await srv.login(localpart)
        return cls(srv.base_url, body["user_id"], body["access_token"], session)

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200, **params: Any) -> Any:
        url = self.base_url + "/_matrix/client/v3" + path
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(
            method, url, json=body, headers=headers, params=params or None
        ) as resp:
            data = await resp.json()
            assert resp.status == expect, (method, path, resp.status, data)
            return data

    async def create_room(self, **body: Any) -> str:
        return str((await self.call("POST", "/createRoom", body))["room_id"])

    async def send(self, room_id: str, body: str | dict[str, Any], event_type: str = "m.room.message") -> str:
        self._txn += 1
        content = {"msgtype": "m.text", "body": body} if isinstance(body, str) else body
        path = f"/rooms/{room_id}/send/{event_type}/t{self._txn}-{time.monotonic_ns()}"
        return str((await self.call("PUT", path, content))["event_id"])

    async def state(self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = "") -> str:
        return str(
            (await self.call("PUT", f"/rooms/{room_id}/state/{event_type}/{state_key}", content))["event_id"]
        )

    async def join(self, room: str, via: list[str] | None = None, expect: int = 200) -> Any:
        params = {"via": via[0]} if via else {}
        return await self.call("POST", f"/join/{quote(room, safe='')}", {}, expect=expect, **params)

    async def sync(self, timeout_ms: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"timeout": str(timeout_ms)}
        if self.since:
            params["since"] = self.since
        data = await self.call("GET", "/sync", **params)
        self.since = data["next_batch"]
        return data  # type: ignore[no-any-return]

    async def hierarchy(self, room_id: str, **params: str) -> list[dict[str, Any]]:
        """The rooms of GET /_matrix/client/v1/rooms/{roomId}/hierarchy (one page)."""
        url = f"{self.base_url}/_matrix/client/v1/rooms/{room_id}/hierarchy"
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.get(url, headers=headers, params=params) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return list(body["rooms"])

    async def messages(self, room_id: str, limit: int = 100) -> list[dict[str, Any]]:
        data = await self.call("GET", f"/rooms/{room_id}/messages", dir="b", limit=str(limit))
        return list(reversed(data["chunk"]))


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


async def room_bodies(client: Client, room_id: str) -> list[str]:
    return [
        e["content"].get("body")
        for e in await client.messages(room_id)
        if e["type"] == "m.room.message" and "body" in e.get("content", {})
    ]


async def has_membership(srv: RunningServer, room_id: str, user_id: str, membership: str = "join") -> bool:
    """Whether `srv` holds `user_id`'s membership in the room as `membership`."""
    found = await srv.hs.events.get_membership(room_id, user_id)
    return found is not None and found[0] == membership


@asynccontextmanager
async def server_pair(
    ca: CertAuthority, dirs: tuple[str, str]
) -> AsyncIterator[tuple[RunningServer, RunningServer, Client, Client]]:
    """Servers A and B, alice signed in on A and bob on B (their `session` is shared)."""
    async with (
        fed_server(dirs[0], ca) as a,
        fed_server(dirs[1], ca) as b,
        aiohttp.ClientSession() as http,
    ):
        yield a, b, await Client.login(a, "alice", http), await Client.login(b, "bob", http)


@asynccontextmanager
async def joined_pair(
    ca: CertAuthority,
    dirs: tuple[str, str],
    *,
    before_join: Callable[[RunningServer, Client, str], Awaitable[None]] | None = None,
    fetch_history: bool = True,
    **room: Any,
) -> AsyncIterator[tuple[RunningServer, RunningServer, Client, Client, str]]:
    """Servers A and B; alice on A creates a public room (`room`: more createRoom options)
    and bob on B has joined it, as A sees. Yields (a, b, alice, bob, room_id).

    `before_join(a, alice, room_id)` runs before bob joins; without `fetch_history` B does
    not backfill the room's history when he does."""
    async with server_pair(ca, dirs) as (a, b, alice, bob):
        room_id = await alice.create_room(preset="public_chat", **room)
        if before_join is not None:
            await before_join(a, alice, room_id)
        if not fetch_history:
            federation_of(b).membership.after_join.clear()
        await bob.join(room_id, via=[a.server_name])
        await wait_for(lambda: has_membership(a, room_id, bob.user_id), what="bob joined on A")
        yield a, b, alice, bob, room_id


async def forge_message(
    srv: RunningServer,
    room_id: str,
    sender: str,
    content: dict[str, Any],
    origin: RunningServer,
    after: Event | None = None,
    auth_event_ids: list[str] | None = None,
) -> Event:
    """A message built on `srv`'s current room state, signed by `origin`'s key. Its prev
    event is `after` if given (a chain), else `srv`'s forward extremities; its auth events
    are `auth_event_ids` if given, else chosen from that state."""
    rv = await srv.hs.events.get_room_version(room_id)
    assert rv is not None
    keys = auth_types_for_event(rv, "m.room.message", sender, None, content)
    state = await srv.hs.events.get_current_state_ids(room_id)
    if after is None:
        prevs, depth = await srv.hs.events.get_extremities_and_depth(room_id)
    else:
        prevs, depth = [after.event_id], after.depth
    return build_event(
        room_version=rv,
        room_id=room_id,
        type="m.room.message",
        sender=sender,
        content=content,
        prev_event_ids=prevs,
        auth_event_ids=auth_event_ids or sorted(state[k] for k in keys if k in state),
        depth=depth + 1,
        origin_server_ts=srv.hs.clock.time_ms(),
        server_name=origin.server_name,
        signing_key=origin.hs.signing_key,
    )


async def forge_chain(
    srv: RunningServer,
    origin: RunningServer,
    room_id: str,
    senders: list[str],
    auth: list[str] | None = None,
    msgtype: str = "m.text",
) -> list[Event]:
    """Messages "run 0", "run 1" ... from `senders` (users of `origin`), each citing the one
    before (the first cites `srv`'s forward extremities), built on `srv`'s view of the room
    and signed by `origin`; `auth`: their auth events, instead of those of `srv`'s state."""
    chain: list[Event] = []
    for i, sender in enumerate(senders):
        content = {"msgtype": msgtype, "body": f"run {i}"}
        after = chain[-1] if chain else None
        chain.append(await forge_message(srv, room_id, sender, content, origin, after, auth))
    return chain


async def send_pdus(
    origin: RunningServer, to: RunningServer, pdus: list[dict[str, Any]], txn: str
) -> dict[str, Any]:
    """PUT a federation transaction of `pdus` from `origin` to `to`; its per-PDU answers."""
    body = {"origin": origin.server_name, "origin_server_ts": 0, "pdus": pdus, "edus": []}
    path = f"/_matrix/federation/v1/send/{quote(txn)}"
    result: dict[str, Any] = await federation_of(origin).client.put(to.server_name, path, body)
    answers: dict[str, Any] = result["pdus"]
    return answers
