"""Client registration rules of the OAuth 2.0 API, on the spec's own examples ("Redirect URI
validation"), and the scope parsing."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.handlers.oauth import parse_scope, s256
from homeserver.handlers.oauth_clients import (
    OAuthError,
    client_id_for,
    redirect_matches,
    validate_client_metadata,
)

WEB = {"client_uri": "https://example.com/", "application_type": "web"}
NATIVE = {"client_uri": "https://example.com/", "application_type": "native"}


def register(base: dict[str, Any], uri: str) -> dict[str, Any]:
    return validate_client_metadata({**base, "redirect_uris": [uri]})


@pytest.mark.parametrize(
    "uri",
    [
        "https://example.com/callback",
        "https://app.example.com/callback",
        "https://example.com:5173/?query=value",
    ],
)
def test_web_redirects_the_spec_allows(uri: str) -> None:
    assert register(WEB, uri)["redirect_uris"] == [uri]


@pytest.mark.parametrize(
    "uri",
    [
        "https://example.com/callback#fragment",
        "http://example.com/callback",
        "http://localhost/",
        "https://user:pw@example.com/cb",
        "https://notexample.com/cb",
    ],
)
def test_web_redirects_the_spec_refuses(uri: str) -> None:
    with pytest.raises(OAuthError) as e:
        register(WEB, uri)
    assert e.value.error == "invalid_redirect_uri"


@pytest.mark.parametrize(
    "uri",
    [
        "com.example.app:/callback",
        "com.example:/",
        "com.example:callback",
        "http://localhost/callback",
        "http://127.0.0.1/callback",
        "http://[::1]/callback",
    ],
)
def test_native_redirects_the_spec_allows(uri: str) -> None:
    assert register(NATIVE, uri)["redirect_uris"] == [uri]


@pytest.mark.parametrize(
    "uri",
    [
        "example:/callback",
        "com.example.app://callback",
        "https://localhost/callback",
        "http://localhost:1234/callback",
    ],
)
def test_native_redirects_the_spec_refuses(uri: str) -> None:
    with pytest.raises(OAuthError):
        register(NATIVE, uri)


def test_loopback_redirects_match_any_port_for_native_clients_only() -> None:
    native = register(NATIVE, "http://127.0.0.1/callback")
    assert redirect_matches(native, "http://127.0.0.1:8123/callback")
    assert redirect_matches(native, "http://127.0.0.1/callback")
    assert not redirect_matches(native, "http://127.0.0.1:8123/other")
    assert not redirect_matches(native, "http://localhost:8123/callback")
    web = register(WEB, "https://example.com/cb")
    assert not redirect_matches(web, "https://example.com:8443/cb")


def test_defaults_and_identity() -> None:
    out = validate_client_metadata(
        {"client_uri": "https://example.com/", "redirect_uris": ["https://example.com/cb"]}
    )
    assert out["grant_types"] == ["authorization_code"] and out["response_types"] == ["code"]
    assert out["application_type"] == "web" and out["token_endpoint_auth_method"] == "none"
    # Localised values are not registered; the ID follows the registered metadata only.
    localised = validate_client_metadata({**out, "client_name#fr": "Appli"})
    assert "client_name#fr" not in localised and client_id_for(localised) == client_id_for(out)
    assert client_id_for({**out, "client_name": "x"}) != client_id_for(out)


def test_scopes() -> None:
    scope = parse_scope("openid urn:matrix:client:api:* urn:matrix:client:device:AbC-1.2_~")
    assert scope.device_id == "AbC-1.2_~"
    assert scope.granted == "urn:matrix:client:api:* urn:matrix:client:device:AbC-1.2_~"
    legacy = parse_scope(
        "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:X"
    )
    assert legacy.device_id == "X"
    for bad in (
        "",
        "urn:matrix:client:device:X",
        "urn:matrix:client:api:*",
        "urn:matrix:client:api:* urn:matrix:client:device:",
    ):
        with pytest.raises(OAuthError) as e:
            parse_scope(bad)
        assert e.value.error == "invalid_scope"
    two = "urn:matrix:client:api:* urn:matrix:client:device:A urn:matrix:client:device:B"
    with pytest.raises(OAuthError):
        parse_scope(two)


def test_pkce_s256_matches_rfc_7636() -> None:
    # RFC 7636 appendix B.
    assert (
        s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )
