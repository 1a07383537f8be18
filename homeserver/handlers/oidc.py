"""An OpenID Connect relying party: the authorization code flow with one provider.

`OidcProvider.authorization_url` is where the user's browser goes; the provider sends it
back to the callback with a code, which `OidcProvider.claims` exchanges at the token
endpoint (authenticated with the client secret, and with the PKCE verifier when used)
for the user's claims. The ID token is verified with joserfc against the provider's
published keys (JWKS): signature, issuer, audience, expiry and the nonce of this login.
Claims come from the ID token, or from the userinfo endpoint when configured (or when
the openid scope was not asked for).

Neither tokens nor claims are logged: they identify the user.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from homeserver.config import OidcProviderConfig

log = logging.getLogger(__name__)

# Discovery documents and key sets are fetched again after this long (keys rotate).
METADATA_TTL_S = 3600
HTTP_TIMEOUT_S = 15
# Asymmetric signatures only: an HMAC would be keyed with the client secret, which the
# configured providers' keys sets never hold, and "none" is never acceptable.
ID_TOKEN_ALGORITHMS = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]
_IDP_ID = re.compile(r"^[A-Za-z0-9._~-]{1,250}$")
# "{{ user.<claim> }}", optionally "| lower": the templates of Synapse's default mapping
# provider that are worth supporting without a template engine.
_TEMPLATE = re.compile(r"^\s*\{\{\s*user\.([A-Za-z0-9_.:-]+)\s*(\|\s*lower\s*)?\}\}\s*$")


class OidcError(Exception):
    """The provider's answer was unusable; the message is safe to show the user."""


def parse_template(template: str) -> tuple[str, bool]:
    """(claim, lowercase) of a "{{ user.<claim> }}" template; ValueError otherwise."""
    m = _TEMPLATE.match(template)
    if m is None:
        raise ValueError(f"unsupported template {template!r}: use {{{{ user.<claim> }}}}, optionally | lower")
    return m.group(1), m.group(2) is not None


def mapping(provider: OidcProviderConfig) -> dict[str, Any]:
    config = provider.user_mapping_provider.get("config", {})
    return config if isinstance(config, dict) else {}


def check_provider(p: OidcProviderConfig) -> None:
    """Validate a provider's config (ValueError) and give its idp_id the "oidc-" prefix."""
    if not p.issuer or not p.client_id:
        raise ValueError("issuer and client_id are required")
    if not _IDP_ID.match(p.idp_id):
        raise ValueError("idp_id: letters, digits and . _ ~ - only")
    # Synapse's rule, so that external IDs stored by a Synapse carry over ("oidc" is kept).
    if p.idp_id != "oidc":
        p.idp_id = "oidc-" + p.idp_id
    if p.client_auth_method not in ("client_secret_basic", "client_secret_post", "none"):
        raise ValueError("client_auth_method: client_secret_basic, client_secret_post or none")
    if p.client_auth_method != "none" and not p.client_secret:
        raise ValueError("client_secret is required unless client_auth_method is none")
    if p.user_profile_method not in ("auto", "userinfo_endpoint"):
        raise ValueError("user_profile_method: auto or userinfo_endpoint")
    if p.pkce_method not in ("auto", "always", "never"):
        raise ValueError("pkce_method: auto, always or never")
    if not isinstance(p.scopes, list) or not all(isinstance(s, str) for s in p.scopes):
        raise ValueError("scopes: a list of strings")
    if not p.discover:
        needed = ["authorization_endpoint", "token_endpoint"]
        needed.append("jwks_uri" if "openid" in p.scopes else "userinfo_endpoint")
        missing = [n for n in needed if not getattr(p, n)]
        if missing:
            raise ValueError(f"without discovery, set {', '.join(missing)}")
    if not isinstance(p.user_mapping_provider, dict):
        raise ValueError("user_mapping_provider: a mapping with a config")
    config = mapping(p)
    for key in ("localpart_template", "display_name_template"):
        if key in config:
            parse_template(str(config[key]))
    if not isinstance(config.get("subject_claim", "sub"), str):
        raise ValueError("user_mapping_provider.config.subject_claim: a claim name")


def pkce_pair(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OidcProvider:
    def __init__(self, config: OidcProviderConfig, callback_url: str) -> None:
        self.config = config
        self.callback_url = callback_url
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._session: aiohttp.ClientSession | None = None

    @property
    def idp_id(self) -> str:
        return self.config.idp_id

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get_json(self, url: str, **kw: Any) -> Any:
        try:
            async with self._http().get(url, **kw) as resp:
                if resp.status != 200:
                    raise OidcError(f"the identity provider answered {resp.status}")
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("identity provider %s: GET failed: %s", self.idp_id, type(e).__name__)
            raise OidcError("the identity provider could not be reached") from None

    async def metadata(self) -> dict[str, Any]:
        c = self.config
        if not c.discover:
            return {
                "authorization_endpoint": c.authorization_endpoint,
                "token_endpoint": c.token_endpoint,
                "userinfo_endpoint": c.userinfo_endpoint,
                "jwks_uri": c.jwks_uri,
            }
        if self._metadata is None or time.monotonic() - self._metadata_at > METADATA_TTL_S:
            url = c.issuer.rstrip("/") + "/.well-known/openid-configuration"
            found = await self._get_json(url)
            if not isinstance(found, dict) or found.get("issuer") != c.issuer:
                raise OidcError("the identity provider's discovery document names another issuer")
            # Settings in the config win over discovery.
            for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
                if getattr(c, key):
                    found[key] = getattr(c, key)
            self._metadata, self._metadata_at = found, time.monotonic()
        return self._metadata

    async def uses_pkce(self) -> bool:
        method = self.config.pkce_method
        if method != "auto":
            return method == "always"
        supported = (await self.metadata()).get("code_challenge_methods_supported")
        return isinstance(supported, list) and "S256" in supported

    async def authorization_url(self, state: str, nonce: str, verifier: str | None) -> str:
        endpoint = (await self.metadata()).get("authorization_endpoint")
        if not isinstance(endpoint, str):
            raise OidcError("the identity provider has no authorization endpoint")
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.callback_url,
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": nonce,
        }
        if verifier is not None:
            params.update(code_challenge=pkce_pair(verifier), code_challenge_method="S256")
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    async def claims(self, code: str, nonce: str, verifier: str | None) -> dict[str, Any]:
        """The user's claims for an authorization code (OidcError if anything is off)."""
        meta = await self.metadata()
        token = await self._exchange(meta, code, verifier)
        claims: dict[str, Any] = {}
        if "openid" in self.config.scopes:
            id_token = token.get("id_token")
            if not isinstance(id_token, str):
                raise OidcError("the identity provider sent no ID token")
            claims = await self._verify_id_token(meta, id_token, nonce)
        if self.config.user_profile_method == "userinfo_endpoint" or "openid" not in self.config.scopes:
            info = await self._userinfo(meta, token)
            if claims and info.get("sub") != claims.get("sub"):
                raise OidcError("the identity provider's userinfo is for another user")
            claims.update(info)
        return claims

    async def _exchange(self, meta: dict[str, Any], code: str, verifier: str | None) -> dict[str, Any]:
        endpoint = meta.get("token_endpoint")
        if not isinstance(endpoint, str):
            raise OidcError("the identity provider has no token endpoint")
        c = self.config
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.callback_url}
        auth: aiohttp.BasicAuth | None = None
        if c.client_auth_method == "client_secret_basic":
            auth = aiohttp.BasicAuth(c.client_id, c.client_secret or "")
        else:
            form["client_id"] = c.client_id
            if c.client_auth_method == "client_secret_post":
                form["client_secret"] = c.client_secret or ""
        if verifier is not None:
            form["code_verifier"] = verifier
        try:
            async with self._http().post(endpoint, data=form, auth=auth) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("identity provider %s: token request failed: %s", self.idp_id, type(e).__name__)
            raise OidcError("the identity provider could not be reached") from None
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            log.info("identity provider %s refused the code: %s %s", self.idp_id, status, error)
            raise OidcError("the identity provider refused the sign-in")
        return body

    async def _key_set(self, meta: dict[str, Any], refresh: bool) -> KeySet:
        uri = meta.get("jwks_uri")
        if not isinstance(uri, str):
            raise OidcError("the identity provider publishes no keys")
        if self._keys is None or refresh or time.monotonic() - self._keys_at > METADATA_TTL_S:
            try:
                self._keys = KeySet.import_key_set(await self._get_json(uri))
            except (JoseError, ValueError, TypeError, KeyError):
                raise OidcError("the identity provider's keys are unreadable") from None
            self._keys_at = time.monotonic()
        return self._keys

    async def _verify_id_token(self, meta: dict[str, Any], id_token: str, nonce: str) -> dict[str, Any]:
        c = self.config
        token = None
        # A key ID we do not know: the provider may have rotated its keys since we fetched them.
        for refresh in (False, True):
            keys = await self._key_set(meta, refresh)
            try:
                token = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGORITHMS)
                break
            except JoseError as e:
                if refresh:
                    log.info("identity provider %s: ID token rejected: %s", self.idp_id, type(e).__name__)
                    raise OidcError("the identity provider's ID token does not verify") from None
            except ValueError:
                raise OidcError("the identity provider's ID token is malformed") from None
        assert token is not None
        registry = jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": c.issuer},
            aud={"essential": True, "value": c.client_id},
            sub={"essential": True},
            exp={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(token.claims)
        except JoseError as e:
            log.info("identity provider %s: ID token claims rejected: %s", self.idp_id, type(e).__name__)
            raise OidcError("the identity provider's ID token is not for this sign-in") from None
        return dict(token.claims)

    async def _userinfo(self, meta: dict[str, Any], token: dict[str, Any]) -> dict[str, Any]:
        endpoint = meta.get("userinfo_endpoint")
        access = token.get("access_token")
        if not isinstance(endpoint, str) or not isinstance(access, str):
            raise OidcError("the identity provider has no userinfo endpoint")
        info = await self._get_json(endpoint, headers={"Authorization": f"Bearer {access}"})
        if not isinstance(info, dict) or not isinstance(info.get("sub"), str):
            raise OidcError("the identity provider's userinfo is malformed")
        return info
