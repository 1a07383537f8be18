"""Device management over real HTTP: list, get, rename, delete with UIA, and the deletion hooks."""

from __future__ import annotations

from typing import Any

import aiohttp
from nio import AsyncClient, DeleteDevicesAuthResponse, DevicesResponse, UpdateDeviceResponse

from homeserver.api.devices import DEVICE_HANDLER_KEY
from tests.support.http import RawClient
from tests.support.server import RunningServer


async def login(
    http: aiohttp.ClientSession, server: RunningServer, localpart: str, **extra: Any
) -> RawClient:
    async with http.post(
        server.base_url + "/_matrix/client/v3/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": "pw",
            **extra,
        },
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    raw = RawClient(http, server.base_url, body["access_token"], body["user_id"])
    raw.device_id = body["device_id"]  # type: ignore[attr-defined]
    return raw


def password_auth(user_id: str, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": "pw",
    }
    if session:
        auth["session"] = session
    return auth


async def test_list_get_rename(server: RunningServer, http: aiohttp.ClientSession) -> None:
    await server.register("alice", "pw")
    a = await login(http, server, "alice", device_id="AAA", initial_device_display_name="Phone")
    await login(http, server, "alice", device_id="BBB")
    devices = (await a.ok("GET", "/devices"))["devices"]
    assert sorted(d["device_id"] for d in devices) == ["AAA", "BBB"]
    for d in devices:
        assert set(d) == {"device_id", "display_name", "last_seen_ip", "last_seen_ts"}
    assert (await a.ok("GET", "/devices/AAA"))["display_name"] == "Phone"
    assert await a.ok("PUT", "/devices/BBB", json={"display_name": "Tablet"}) == {}
    assert (await a.ok("GET", "/devices/BBB"))["display_name"] == "Tablet"
    assert await a.ok("PUT", "/devices/BBB", json={}) == {}
    assert (await a.ok("GET", "/devices/BBB"))["display_name"] == "Tablet"
    for method in ("GET", "PUT"):
        status, body = await a.request(method, "/devices/NOPE", json={"display_name": "x"})
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    # Other users' devices are invisible.
    await server.register("bob", "pw")
    b = await login(http, server, "bob")
    status, _ = await b.request("GET", "/devices/AAA")
    assert status == 404
    status, body = await RawClient(http, server.base_url).request("GET", "/devices")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_delete_device_with_uia_runs_hooks(server: RunningServer, http: aiohttp.ClientSession) -> None:
    deleted: list[tuple[str, list[str]]] = []

    async def hook(user_id: str, device_ids: list[str]) -> None:
        deleted.append((user_id, device_ids))

    server.runner.app[DEVICE_HANDLER_KEY].on_device_deleted.append(hook)
    user_id = await server.register("carol", "pw")
    a = await login(http, server, "carol", device_id="KEEP")
    b = await login(http, server, "carol", device_id="GONE")
    status, body = await a.request("DELETE", "/devices/GONE")
    assert status == 401 and body["flows"] == [{"stages": ["m.login.password"]}]
    session = body["session"]
    wrong = password_auth(user_id, session)
    wrong["password"] = "bad"
    status, body = await a.request("DELETE", "/devices/GONE", json={"auth": wrong})
    assert (status, body["errcode"]) == (401, "M_FORBIDDEN")
    # A session started for one device cannot delete another.
    status, body = await a.request("DELETE", "/devices/KEEP", json={"auth": password_auth(user_id, session)})
    assert status == 403
    status, body = await a.request("DELETE", "/devices/GONE", json={"auth": password_auth(user_id, session)})
    assert (status, body) == (200, {})
    assert deleted == [(user_id, ["GONE"])]
    status, body = await b.request("GET", "/account/whoami")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, _ = await a.request("GET", "/devices/GONE")
    assert status == 404
    # Deleting an already-deleted device succeeds (after auth).
    status, body = await a.request("DELETE", "/devices/GONE", json={"auth": password_auth(user_id)})
    assert (status, body) == (200, {})


async def test_delete_devices_bulk(server: RunningServer, http: aiohttp.ClientSession) -> None:
    user_id = await server.register("dan", "pw")
    a = await login(http, server, "dan", device_id="D1")
    await login(http, server, "dan", device_id="D2")
    await login(http, server, "dan", device_id="D3")
    status, body = await a.request("POST", "/delete_devices", json={"devices": ["D2", "D3"]})
    assert status == 401
    status, body = await a.request(
        "POST",
        "/delete_devices",
        json={"devices": ["D2", "D3"], "auth": password_auth(user_id, body["session"])},
    )
    assert (status, body) == (200, {})
    assert [d["device_id"] for d in (await a.ok("GET", "/devices"))["devices"]] == ["D1"]
    status, body = await a.request("POST", "/delete_devices", json={"devices": "D1"})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, body = await a.request("POST", "/delete_devices", json={})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")


async def test_nio_devices(server: RunningServer) -> None:
    user_id = await server.register("nio", "pw")
    client = AsyncClient(server.base_url, "nio", device_id="NIO1")
    other = AsyncClient(server.base_url, "nio", device_id="NIO2")
    try:
        await client.login("pw", device_name="first")
        await other.login("pw", device_name="second")
        resp = await client.devices()
        assert isinstance(resp, DevicesResponse), resp
        assert sorted(d.id for d in resp.devices) == ["NIO1", "NIO2"]
        renamed = await client.update_device("NIO2", {"display_name": "renamed"})
        assert isinstance(renamed, UpdateDeviceResponse), renamed
        first = await client.delete_devices(["NIO2"])
        assert isinstance(first, DeleteDevicesAuthResponse), first
        auth = password_auth(user_id, first.session)
        done = await client.delete_devices(["NIO2"], auth=auth)
        assert not isinstance(done, DeleteDevicesAuthResponse), done
        resp = await client.devices()
        assert isinstance(resp, DevicesResponse)
        assert [d.id for d in resp.devices] == ["NIO1"]
    finally:
        await client.close()
        await other.close()
