"""OAuth 2.0 dynamic client registration (RFC 7591) as the Matrix spec restricts it: public
clients only, the authorisation code and device grants, and strict redirect URIs
(client-server API, "Client registration" and "Redirect URI validation").

Everything here is pure: the metadata a client sent in, the metadata registered out, or an
`OAuthError` naming what is wrong.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import urlsplit

from homeserver.events.canonical import canonical_json

AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
GRANT_TYPES = (AUTHORIZATION_CODE, REFRESH_TOKEN, DEVICE_CODE)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# Human-readable URIs that must share the client URI's base.
_LINKS = ("logo_uri", "tos_uri", "policy_uri")


class OAuthError(Exception):
    """An OAuth 2.0 error response: `{"error": ..., "error_description": ...}`."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def to_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _metadata_error(description: str) -> OAuthError:
    return OAuthError("invalid_client_metadata", description)


def _redirect_error(description: str) -> OAuthError:
    return OAuthError("invalid_redirect_uri", description)


def _host(netloc: str) -> str:
    """The host of an authority (no user info, no port), lower-cased."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.partition(":")[0].lower()


def shares_base(client_uri: str, uri: str) -> bool:
    """`uri` is https on the client URI's host or one of its subdomains (any port)."""
    base, other = urlsplit(client_uri), urlsplit(uri)
    if other.scheme != "https" or "@" in other.netloc:
        return False
    host, base_host = _host(other.netloc), _host(base.netloc)
    return bool(host) and (host == base_host or host.endswith("." + base_host))


def _check_web_redirect(client_uri: str, uri: str) -> None:
    if not shares_base(client_uri, uri):
        raise _redirect_error(f"{uri}: must be https on the client URI's host or a subdomain of it")


def _check_native_redirect(client_uri: str, uri: str) -> None:
    parts = urlsplit(uri)
    if parts.scheme == "http":
        if _host(parts.netloc) not in LOOPBACK_HOSTS or parts.port is not None or "@" in parts.netloc:
            raise _redirect_error(
                f"{uri}: an http redirect URI must be the loopback interface, without a port"
            )
        return
    if parts.scheme == "https":
        _check_web_redirect(client_uri, uri)
        return
    # A private-use scheme: the client URI's host in reverse-DNS order, and no authority.
    reverse = ".".join(reversed(_host(urlsplit(client_uri).netloc).split(".")))
    if not (parts.scheme == reverse or parts.scheme.startswith(reverse + ".")):
        raise _redirect_error(f"{uri}: a private-use scheme must start with {reverse}")
    if uri[len(parts.scheme) + 1 :].startswith("//"):
        raise _redirect_error(f"{uri}: a private-use scheme URI must not have an authority")


def _string_list(body: dict[str, Any], name: str, default: list[str]) -> list[str]:
    value = body.get(name, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _metadata_error(f"{name} must be a list of strings")
    return list(value)


def validate_client_metadata(body: Any) -> dict[str, Any]:
    """The metadata to register for a registration request (unsupported grant types and
    localised values dropped), or `OAuthError`."""
    if not isinstance(body, dict):
        raise _metadata_error("The body must be a JSON object")
    client_uri = body.get("client_uri")
    if not isinstance(client_uri, str):
        raise _metadata_error("client_uri is required")
    parts = urlsplit(client_uri)
    if parts.scheme != "https" or not parts.netloc or "@" in parts.netloc or parts.fragment:
        raise _metadata_error("client_uri must be an https URL without user info or fragment")
    application_type = body.get("application_type", "web")
    if application_type not in ("web", "native"):
        raise _metadata_error("application_type must be web or native")
    if body.get("token_endpoint_auth_method", "none") != "none":
        raise _metadata_error("Only public clients (token_endpoint_auth_method none) are supported")
    grant_types = [g for g in _string_list(body, "grant_types", [AUTHORIZATION_CODE]) if g in GRANT_TYPES]
    if AUTHORIZATION_CODE not in grant_types and DEVICE_CODE not in grant_types:
        raise _metadata_error("grant_types must include authorization_code or the device code grant")
    response_types = _string_list(
        body, "response_types", ["code"] if AUTHORIZATION_CODE in grant_types else []
    )
    if any(r != "code" for r in response_types):
        raise _metadata_error("Only the code response type is supported")
    redirect_uris = _string_list(body, "redirect_uris", [])
    if AUTHORIZATION_CODE in grant_types and not redirect_uris:
        raise _redirect_error("redirect_uris is required for the authorization code grant")
    for uri in redirect_uris:
        if "#" in uri:
            raise _redirect_error(f"{uri}: a redirect URI must not have a fragment")
        if application_type == "web":
            _check_web_redirect(client_uri, uri)
        else:
            _check_native_redirect(client_uri, uri)
    out: dict[str, Any] = {
        "client_uri": client_uri,
        "application_type": application_type,
        "token_endpoint_auth_method": "none",
        "grant_types": grant_types,
        "response_types": response_types,
        "redirect_uris": redirect_uris,
    }
    name = body.get("client_name")
    if name is not None:
        if not isinstance(name, str) or len(name) > 255:
            raise _metadata_error("client_name must be a string of at most 255 characters")
        out["client_name"] = name
    for link in _LINKS:
        value = body.get(link)
        if value is None:
            continue
        if not isinstance(value, str) or not shares_base(client_uri, value):
            raise _metadata_error(f"{link} must be https on the client URI's host or a subdomain of it")
        out[link] = value
    return out


def client_id_for(metadata: dict[str, Any]) -> str:
    """The same metadata always gets the same ID, so repeated registrations (the spec asks
    clients to register at each sign-in) do not pile up."""
    digest = hashlib.sha256(canonical_json(metadata)).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def redirect_matches(metadata: dict[str, Any], uri: str) -> bool:
    """`uri` is one of the client's redirect URIs; a native client's loopback URI may carry
    any port (the spec: the homeserver MUST accept any port number)."""
    registered = metadata.get("redirect_uris", [])
    if uri in registered:
        return True
    if metadata.get("application_type") != "native":
        return False
    parts = urlsplit(uri)
    if parts.scheme != "http" or _host(parts.netloc) not in LOOPBACK_HOSTS or parts.port is None:
        return False
    return parts._replace(netloc=_host(parts.netloc)).geturl() in registered
