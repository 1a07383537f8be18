"""`oidc_providers` in the config file, and the pieces of single sign-on with no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.config import ConfigError, config_from_dict
from homeserver.errors import MatrixError
from homeserver.handlers.oidc import parse_template, pkce_pair
from homeserver.handlers.sso import check_redirect_url, localpart_from, with_login_token

BASE = {"issuer": "https://idp.example", "client_id": "c", "client_secret": "s"}


def _providers(*entries: dict[str, Any]) -> Any:
    return config_from_dict({"server_name": "example.org", "oidc_providers": list(entries)}).oidc_providers


def test_providers_are_read_with_synapses_keys() -> None:
    (p,) = _providers({**BASE, "idp_id": "corp", "idp_name": "Corp", "scopes": ["openid", "email"]})
    assert (p.idp_id, p.idp_name, p.scopes, p.client_auth_method) == (
        "oidc-corp",
        "Corp",
        ["openid", "email"],
        "client_secret_basic",
    )
    assert _providers(BASE)[0].idp_id == "oidc"  # Synapse's default keeps its name
    assert config_from_dict({"server_name": "example.org"}).oidc_providers == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"client_id": "c", "client_secret": "s"}, "issuer and client_id"),
        ({**BASE, "client_secret": None}, "client_secret is required"),
        ({**BASE, "client_auth_method": "private_key_jwt"}, "client_auth_method"),
        ({**BASE, "idp_id": "has space"}, "idp_id"),
        (
            {**BASE, "discover": False, "authorization_endpoint": "https://idp.example/a"},
            "token_endpoint, jwks_uri",
        ),
        (
            {**BASE, "user_mapping_provider": {"config": {"localpart_template": "{{ user.a ~ user.b }}"}}},
            "unsupported template",
        ),
        ({**BASE, "pkce_method": "sometimes"}, "pkce_method"),
        ({**BASE, "user_profile_method": "guess"}, "user_profile_method"),
        ({**BASE, "surprise": 1}, "unknown config key: oidc_providers\\[0\\].surprise"),
    ],
)
def test_bad_providers_stop_startup(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _providers(entry)


def test_two_providers_need_two_ids() -> None:
    with pytest.raises(ConfigError, match="its own idp_id"):
        _providers({**BASE, "idp_id": "a"}, {**BASE, "idp_id": "a"})


def test_templates_localparts_and_urls() -> None:
    assert parse_template("{{ user.preferred_username }}") == ("preferred_username", False)
    assert parse_template("{{user.email|lower}}") == ("email", True)
    assert localpart_from("Jane_Doe.99") == "jane_doe.99"
    assert localpart_from("josé@x") == "jos=c3=a9=40x"
    assert (
        with_login_token("https://c.example/cb?a=1&loginToken=old#frag", "T")
        == "https://c.example/cb?a=1&loginToken=T#frag"
    )
    assert with_login_token("io.element.app:/callback", "T") == "io.element.app:/callback?loginToken=T"
    assert check_redirect_url("io.element.app:/callback") == "io.element.app:/callback"
    for bad in ("", None, "/relative", "JavaScript:alert(1)", "data:text/html,x", "http://[::1/cb"):
        with pytest.raises(MatrixError):
            check_redirect_url(bad)
    # RFC 7636's example.
    assert (
        pkce_pair("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )
