"""The OAuth 2.0 API across two workers on PostgreSQL + Redis: every step of a sign-in may
reach either worker (the client registers on one, the browser signs in on the other, the code
is exchanged on the first), and revoking on one worker ends the session on the other at once
(the token caches are dropped through Redis)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from tests.scale.matrix import CS, call, register
from tests.scale.services import SottoProcesses

pytestmark = pytest.mark.timeout(120)
CLIENT = {
    "client_name": "Two workers",
    "client_uri": "https://app.example.org/",
    "redirect_uris": ["https://app.example.org/callback"],
    "grant_types": ["authorization_code", "refresh_token"],
}


async def _token(s: aiohttp.ClientSession, url: str, **form: str) -> dict[str, Any]:
    async with s.post(url + "/_sotto/oauth2/token", data=form) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return dict(body)


async def test_a_sign_in_spread_over_two_workers(workdir: Path, pg_url: str, redis_url: str) -> None:
    procs = SottoProcesses(workdir, pg_url, redis_url)
    procs.extra_config = {"oauth": {"enabled": True}}
    procs.start_independent(2)
    try:
        await procs.wait_ready()
        first, second = procs.base_url(0), procs.base_url(1)
        user_id, _ = await register(first, "alice")
        async with aiohttp.ClientSession() as s:
            async with s.post(first + "/_sotto/oauth2/register", json=CLIENT) as resp:
                client_id = (await resp.json())["client_id"]
            verifier = secrets.token_urlsafe(48)
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
            query = {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": CLIENT["redirect_uris"][0],
                "scope": "urn:matrix:client:api:* urn:matrix:client:device:TWOWORKERS",
                "state": "s",
                "code_challenge": challenge.decode(),
                "code_challenge_method": "S256",
            }
            authorize = f"{second}/_sotto/oauth2/authorize?{urlencode(query)}"
            form = {"username": "alice", "password": "password", "action": "allow"}
            async with s.post(authorize, data=form, allow_redirects=False) as resp:
                assert resp.status == 302, await resp.text()
                code = parse_qs(urlsplit(resp.headers["Location"]).fragment)["code"][0]
            tokens = await _token(
                s,
                first,
                grant_type="authorization_code",
                code=code,
                redirect_uri=CLIENT["redirect_uris"][0],
                client_id=client_id,
                code_verifier=verifier,
            )
            fresh = await _token(
                s,
                second,
                grant_type="refresh_token",
                refresh_token=tokens["refresh_token"],
                client_id=client_id,
            )
            for url in (first, second):
                status, me = await call(s, "GET", url + CS + "/account/whoami", fresh["access_token"])
                assert (status, me.get("user_id"), me.get("device_id")) == (200, user_id, "TWOWORKERS")
            async with s.post(first + "/_sotto/oauth2/revoke", data={"token": fresh["access_token"]}) as resp:
                assert resp.status == 200
            # The second worker had the token cached; the revocation reached it.
            status, body = await call(s, "GET", second + CS + "/account/whoami", fresh["access_token"])
            assert (status, body.get("errcode")) == (401, "M_UNKNOWN_TOKEN")
    finally:
        procs.stop()
