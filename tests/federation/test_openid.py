"""OpenID tokens: a client asks its server for one; a third party checks it at the server's
federation listener and learns only who the user is, for as long as the token lives."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from homeserver.api.openid import TOKEN_LIFETIME_MS
from tests.federation.support import CertAuthority, fed_server, federation_of
from tests.support.http import RawClient


async def test_openid_token_is_checked_at_the_federation_listener(
    test_ca: CertAuthority, tmp_dirs: tuple[str, str]
) -> None:
    async with fed_server(tmp_dirs[0], test_ca) as srv, aiohttp.ClientSession() as session:
        alice_login = await srv.login("alice")
        bob_login = await srv.login("bob")
        alice = RawClient(session, srv.base_url, alice_login["access_token"], alice_login["user_id"])
        path = f"/user/{quote(alice.user_id)}/openid/request_token"
        issued = await alice.ok("POST", path, json={})
        assert issued["token_type"] == "Bearer"
        assert issued["matrix_server_name"] == srv.server_name
        assert issued["expires_in"] == TOKEN_LIFETIME_MS // 1000
        # Only for oneself.
        bob = RawClient(session, srv.base_url, bob_login["access_token"], bob_login["user_id"])
        status, body = await bob.request("POST", path, json={})
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        # The token is not an access token.
        status, body = await RawClient(session, srv.base_url, issued["access_token"]).request(
            "GET", "/account/whoami"
        )
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"

        ssl_ctx = federation_of(srv).client.ssl_context
        url = f"https://{srv.server_name}/_matrix/federation/v1/openid/userinfo"

        async def userinfo(params: dict[str, str]) -> tuple[int, Any]:
            async with session.get(url, params=params, ssl=ssl_ctx) as resp:
                return resp.status, await resp.json()

        assert await userinfo({"access_token": issued["access_token"]}) == (200, {"sub": alice.user_id})
        status, body = await userinfo({"access_token": "oid_guess"})
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
        status, body = await userinfo({})
        assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"
        # Expired: unknown.
        clock = srv.hs.clock
        real = clock.time_ms
        clock.time_ms = lambda: real() + TOKEN_LIFETIME_MS + 1  # type: ignore[method-assign]
        try:
            status, body = await userinfo({"access_token": issued["access_token"]})
        finally:
            clock.time_ms = real  # type: ignore[method-assign]
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
