"""A small OpenID Connect provider for single sign-on tests: discovery, an authorize endpoint
that signs in whichever user the test chose (no login form), a token endpoint checking the
client's secret, the redirect URI and the PKCE verifier, ID tokens signed with an RSA key
(joserfc), userinfo and the key set. `tamper` makes it misbehave in one chosen way."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.support.server import free_port

CLIENT_ID = "sotto-test"
CLIENT_SECRET = "s3cret-for-tests"


@dataclass
class Grant:
    claims: dict[str, Any]
    nonce: str
    redirect_uri: str
    challenge: str | None


@dataclass
class FakeIdentityProvider:
    issuer: str
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "k1"}))
    # The claims of the user the next authorization signs in.
    user: dict[str, Any] = field(default_factory=dict)
    # "aud", "nonce", "key", "exp", "no-exp": how the next ID token is wrong; "" for none.
    tamper: str = ""
    pkce: bool = True
    grants: dict[str, Grant] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    # Claims only the userinfo endpoint tells.
    userinfo_extra: dict[str, Any] = field(default_factory=dict)

    def provider_config(self, **extra: Any) -> dict[str, Any]:
        """An `oidc_providers` entry for this provider."""
        return {
            "idp_id": "test",
            "idp_name": "Test IdP",
            "issuer": self.issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scopes": ["openid", "profile"],
            "user_mapping_provider": {
                "config": {
                    "localpart_template": "{{ user.preferred_username }}",
                    "display_name_template": "{{ user.name }}",
                }
            },
            **extra,
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_get("/userinfo", self.userinfo)
        app.router.add_get("/jwks", self.jwks)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        doc: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "userinfo_endpoint": self.issuer + "/userinfo",
            "jwks_uri": self.issuer + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        if self.pkce:
            doc["code_challenge_methods_supported"] = ["S256"]
        return web.json_response(doc)

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code" or "openid" not in q["scope"]:
            return web.json_response({"error": "invalid_request"}, status=400)
        if self.pkce and q.get("code_challenge_method") != "S256":
            return web.json_response({"error": "invalid_request", "error_description": "PKCE"}, status=400)
        code = secrets.token_urlsafe(16)
        self.grants[code] = Grant(dict(self.user), q["nonce"], q["redirect_uri"], q.get("code_challenge"))
        location = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
        return web.Response(status=302, headers={"Location": location})

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_requests.append({k: str(v) for k, v in form.items()})
        basic = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        posted = form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET
        if request.headers.get("Authorization") != basic and not posted:
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self.grants.pop(str(form.get("code")), None)
        if grant is None or form.get("redirect_uri") != grant.redirect_uri:
            return web.json_response({"error": "invalid_grant"}, status=400)
        if grant.challenge is not None:
            verifier = str(form.get("code_verifier", ""))
            digest = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            )
            if digest != grant.challenge:
                return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            **grant.claims,
        }
        key = self.key
        if self.tamper == "aud":
            claims["aud"] = "someone-else"
        elif self.tamper == "nonce":
            claims["nonce"] = "replayed"
        elif self.tamper == "exp":
            claims["exp"] = now - 600
        elif self.tamper == "no-exp":
            del claims["exp"]
        elif self.tamper == "key":
            key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)
        access = secrets.token_urlsafe(16)
        self.tokens[access] = {"sub": grant.claims.get("sub"), **self.userinfo_extra, **grant.claims}
        return web.json_response({"access_token": access, "token_type": "Bearer", "id_token": id_token})

    async def userinfo(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response(self.tokens[token])

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.key.as_dict(private=False)]})


@asynccontextmanager
async def identity_provider() -> AsyncIterator[FakeIdentityProvider]:
    port = free_port()
    idp = FakeIdentityProvider(f"http://127.0.0.1:{port}")
    runner = web.AppRunner(idp.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield idp
    finally:
        await runner.cleanup()
