"""Application service registration files: what is accepted, what stops start-up, and
how namespaces match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from homeserver.appservice.registration import AppServices, RegistrationError, parse_registration
from homeserver.config import ConfigError, config_from_dict

SERVER = "example.org"


def registration(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "irc",
        "url": "http://127.0.0.1:9999/",
        "as_token": "as-secret",
        "hs_token": "hs-secret",
        "sender_localpart": "_irc_bot",
        "namespaces": {
            "users": [{"exclusive": True, "regex": "@_irc_.*"}, {"exclusive": False, "regex": "@irc-.*"}],
            "aliases": [{"exclusive": False, "regex": "#_irc_.*"}],
            "rooms": [{"exclusive": False, "regex": "!logged:example.org"}],
        },
    }
    data.update(changes)
    return data


def test_namespaces_match_and_claim() -> None:
    service = parse_registration(registration(), SERVER)
    assert service.url == "http://127.0.0.1:9999"
    assert service.sender == "@_irc_bot:example.org"
    assert service.rate_limited and not service.receive_ephemeral
    assert service.owns_user("@_irc_bob:example.org") and service.claims_user("@_irc_bob:example.org")
    # A non-exclusive namespace: the service may act as these users, people may register them.
    assert service.owns_user("@irc-alice:example.org") and not service.claims_user("@irc-alice:example.org")
    assert not service.owns_user("@bob:example.org")
    assert service.owns_user(service.sender) and service.claims_user(service.sender)
    assert service.owns_alias("#_irc_lobby:example.org") and not service.claims_alias(
        "#_irc_lobby:example.org"
    )
    assert service.wants_room("!logged:example.org") and not service.wants_room("!other:example.org")
    assert "secret" not in repr(service)
    assert not service.encryption


def test_the_unstable_flags_bridges_write() -> None:
    service = parse_registration(
        registration(**{"de.sorunome.msc2409.push_ephemeral": True, "org.matrix.msc3202": True}), SERVER
    )
    assert service.receive_ephemeral and service.encryption
    # The stable name wins when both are there.
    both = registration(**{"de.sorunome.msc2409.push_ephemeral": True, "receive_ephemeral": False})
    assert not parse_registration(both, SERVER).receive_ephemeral


def test_lookups_across_services() -> None:
    irc = parse_registration(registration(), SERVER)
    silent = parse_registration(
        registration(
            id="log", as_token="as-secret-2", url=None, namespaces={"users": [{"regex": "@_irc_.*"}]}
        ),
        SERVER,
    )
    services = AppServices([irc, silent])
    assert services.for_token_hash("nope") is None
    assert services.user_claimed_by("@_irc_x:example.org") is irc
    assert services.user_claimed_by("@x:example.org") is None
    # Only services with a URL can be asked about unknown users.
    assert services.user_owners("@_irc_x:example.org") == [irc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id": ""}, "id"),
        ({"url": "ftp://example.org"}, "url"),
        ({"as_token": 5}, "as_token"),
        ({"hs_token": "as-secret"}, "must differ"),
        ({"sender_localpart": "Not Valid"}, "sender_localpart"),
        ({"namespaces": {"users": [{"regex": "("}]}}, "namespaces.users[0].regex"),
        ({"namespaces": {"users": [{"regex": "@a.*", "exclusive": "yes"}]}}, "exclusive"),
        ({"namespaces": {"aliases": "#a.*"}}, "namespaces.aliases"),
        ({"rate_limited": "no"}, "rate_limited"),
        ({"protocols": "irc"}, "protocols"),
        ({"org.matrix.msc3202": "yes"}, "org.matrix.msc3202"),
    ],
)
def test_bad_registrations_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(RegistrationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_registration(registration(**changes), SERVER)


def test_the_config_reads_them_and_refuses_duplicates(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(registration()))
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(registration(id="other")))
    config = config_from_dict({"server_name": SERVER, "app_services": ["one.yaml"]}, str(tmp_path))
    assert config.app_services == ["one.yaml"]
    # The spec: each as_token and id must be unique, and the server must enforce it.
    with pytest.raises(ConfigError, match="share an as_token"):
        config_from_dict({"server_name": SERVER, "app_services": ["one.yaml", "two.yaml"]}, str(tmp_path))
    with pytest.raises(ConfigError, match="the id 'irc'"):
        config_from_dict({"server_name": SERVER, "app_services": ["one.yaml", "one.yaml"]}, str(tmp_path))
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        config_from_dict({"server_name": SERVER, "app_services": ["missing.yaml"]}, str(tmp_path))
