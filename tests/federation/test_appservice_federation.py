"""An application service behind a federated server: another server's invite to, or
profile lookup of, a namespace user this server does not know yet asks the service first,
which registers the user; the invite then reaches the service like any other event."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web

from tests.federation.support import CertAuthority, Client, fed_server, wait_for
from tests.support.appservice import AS_TOKEN, HS_TOKEN, Receiver, write_registration
from tests.support.server import free_port


async def test_a_remote_invite_and_profile_lookup_ask_the_bridge(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    as_port = free_port()
    receiver = Receiver()
    asked: list[str] = []
    registration = write_registration(tmp_dirs[0], as_port)
    async with (
        fed_server(tmp_dirs[0], test_ca, app_services=[registration]) as a,
        fed_server(tmp_dirs[1], test_ca) as b,
        aiohttp.ClientSession() as http,
    ):

        async def query_user(request: web.Request) -> web.Response:
            # The bridge creates its users on demand, through A's registration endpoint.
            assert request.headers["Authorization"] == f"Bearer {HS_TOKEN}"
            user_id = unquote(request.match_info["user_id"])
            asked.append(user_id)
            localpart = user_id[1:].split(":")[0]
            body = {"type": "m.login.application_service", "username": localpart, "inhibit_login": True}
            headers = {"Authorization": f"Bearer {AS_TOKEN}"}
            async with http.post(f"{a.base_url}/_matrix/client/v3/register", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
            return web.json_response({})

        bridge = web.Application()
        bridge.router.add_get("/_matrix/app/v1/users/{user_id}", query_user)
        bridge.router.add_put("/_matrix/app/v1/transactions/{txn}", receiver.handle)
        runner = web.AppRunner(bridge)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", as_port).start()
        try:
            bob = await Client.login(b, "bob", http)
            room = await bob.create_room(preset="private_chat")
            zed = f"@_bridge_zed:{a.server_name}"
            await bob.call("POST", f"/rooms/{quote(room)}/invite", {"user_id": zed})
            assert asked == [zed] and await a.hs.accounts.user_exists(zed)

            async def invited() -> bool:
                return any(
                    e["type"] == "m.room.member" and e.get("state_key") == zed
                    for _, events in receiver.transactions
                    for e in events
                )

            await wait_for(invited, what="the invite reached the bridge")
            # A profile lookup from B of another unknown namespace user.
            yan = f"@_bridge_yan:{a.server_name}"
            profile: Any = await bob.call("GET", f"/profile/{quote(yan)}")
            assert asked[-1] == yan and isinstance(profile, dict)
            # Users outside every namespace are not asked about.
            await bob.call("GET", f"/profile/{quote('@nobody:' + a.server_name)}", expect=404)
            assert len(asked) == 2
        finally:
            await runner.cleanup()
