"""Application service registrations: the YAML files an operator lists under
`app_services` in the config, parsed and checked once at start-up.

A registration names the service (`id`), where the homeserver reaches it (`url`, or
null for a service that only talks to the homeserver), the two tokens (`as_token` the
service presents to the homeserver, `hs_token` the homeserver presents to it), its bot
user (`sender_localpart`) and the namespaces of user IDs, room aliases and room IDs it
is interested in, each exclusive or not. The spec requires `id` and `as_token` to be
unique across services; `AppServices` refuses a set that repeats either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from homeserver.handlers.auth import hash_token
from homeserver.handlers.users import validate_localpart

NAMESPACE_KINDS = ("users", "aliases", "rooms")


class RegistrationError(ValueError):
    """A registration file that cannot be used (the message names the file and the field)."""


@dataclass(frozen=True, slots=True)
class Namespace:
    exclusive: bool
    regex: re.Pattern[str]

    def matches(self, value: str) -> bool:
        # Anchored at the start, as Synapse does: registrations in the wild are written
        # for that ("@_irc_.*" covers "@_irc_bob:example.org").
        return self.regex.match(value) is not None


@dataclass(frozen=True, slots=True)
class AppService:
    id: str
    url: str | None
    as_token: str
    hs_token: str
    sender: str
    users: tuple[Namespace, ...]
    aliases: tuple[Namespace, ...]
    rooms: tuple[Namespace, ...]
    rate_limited: bool
    receive_ephemeral: bool
    protocols: tuple[str, ...]
    # MSC2409 to-device messages and MSC3202 device lists and key counts in transactions
    # (`org.matrix.msc3202: true`): what a bridge encrypting as its own users needs.
    encryption: bool = False

    def owns_user(self, user_id: str) -> bool:
        """Whether the service may act as `user_id`: its bot, or a user in its namespaces."""
        return user_id == self.sender or any(n.matches(user_id) for n in self.users)

    def owns_alias(self, alias: str) -> bool:
        return any(n.matches(alias) for n in self.aliases)

    def claims_user(self, user_id: str) -> bool:
        """Whether `user_id` is in one of the service's exclusive user namespaces."""
        return user_id == self.sender or any(n.exclusive and n.matches(user_id) for n in self.users)

    def claims_alias(self, alias: str) -> bool:
        return any(n.exclusive and n.matches(alias) for n in self.aliases)

    def wants_room(self, room_id: str) -> bool:
        return any(n.matches(room_id) for n in self.rooms)

    def __repr__(self) -> str:
        # Never the tokens: a registration can end up in a log line or a traceback.
        return f"AppService(id={self.id!r}, url={self.url!r}, sender={self.sender!r})"


def _namespaces(raw: Any, kind: str, where: str) -> tuple[Namespace, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RegistrationError(f"{where}: namespaces.{kind} must be a list")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("regex"), str):
            raise RegistrationError(f"{where}: namespaces.{kind}[{i}] needs a regex string")
        exclusive = entry.get("exclusive", False)
        if not isinstance(exclusive, bool):
            raise RegistrationError(f"{where}: namespaces.{kind}[{i}].exclusive must be true or false")
        try:
            regex = re.compile(entry["regex"])
        except re.error as e:
            raise RegistrationError(f"{where}: namespaces.{kind}[{i}].regex: {e}") from None
        out.append(Namespace(exclusive, regex))
    return tuple(out)


def _token(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise RegistrationError(f"{where}: {key} must be a non-empty string")
    return value


def parse_registration(data: Any, server_name: str, where: str = "registration") -> AppService:
    """One registration from its decoded YAML."""
    if not isinstance(data, dict):
        raise RegistrationError(f"{where}: expected a mapping")
    service_id = data.get("id")
    if not isinstance(service_id, str) or not service_id:
        raise RegistrationError(f"{where}: id must be a non-empty string")
    url = data.get("url")
    if url is not None:
        if not isinstance(url, str) or URL(url).scheme not in ("http", "https") or not URL(url).host:
            raise RegistrationError(f"{where}: url must be an http(s) URL or null")
        url = url.rstrip("/")
    as_token = _token(data, "as_token", where)
    hs_token = _token(data, "hs_token", where)
    if as_token == hs_token:
        raise RegistrationError(f"{where}: as_token and hs_token must differ")
    localpart = data.get("sender_localpart")
    if not isinstance(localpart, str):
        raise RegistrationError(f"{where}: sender_localpart must be a string")
    try:
        sender = validate_localpart(localpart, server_name)
    except Exception as e:
        raise RegistrationError(f"{where}: sender_localpart: {e}") from None
    namespaces = data.get("namespaces") or {}
    if not isinstance(namespaces, dict):
        raise RegistrationError(f"{where}: namespaces must be a mapping")
    protocols = data.get("protocols") or []
    if not isinstance(protocols, list) or not all(isinstance(p, str) for p in protocols):
        raise RegistrationError(f"{where}: protocols must be a list of strings")
    flags: dict[str, bool] = {}
    for key, default in (
        ("rate_limited", True),
        # The unstable name bridges (mautrix) still write beside, or instead of, the stable one.
        ("receive_ephemeral", data.get("de.sorunome.msc2409.push_ephemeral", False)),
        ("org.matrix.msc3202", False),
    ):
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise RegistrationError(f"{where}: {key} must be true or false")
        flags[key] = value
    return AppService(
        id=service_id,
        url=url,
        as_token=as_token,
        hs_token=hs_token,
        sender=sender,
        users=_namespaces(namespaces.get("users"), "users", where),
        aliases=_namespaces(namespaces.get("aliases"), "aliases", where),
        rooms=_namespaces(namespaces.get("rooms"), "rooms", where),
        rate_limited=flags["rate_limited"],
        receive_ephemeral=flags["receive_ephemeral"],
        protocols=tuple(protocols),
        encryption=flags["org.matrix.msc3202"],
    )


def load_registrations(paths: Sequence[str], server_name: str, base_dir: str = ".") -> list[AppService]:
    """The registrations in `paths` (relative ones against `base_dir`), checked together."""
    services = []
    for name in paths:
        path = Path(base_dir) / name
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise RegistrationError(f"app service registration {path}: {e}") from None
        services.append(parse_registration(data, server_name, str(path)))
    check_unique(services)
    return services


def check_unique(services: Iterable[AppService]) -> None:
    ids: set[str] = set()
    tokens: set[str] = set()
    for s in services:
        if s.id in ids:
            raise RegistrationError(f"two app service registrations have the id {s.id!r}")
        if s.as_token in tokens:
            raise RegistrationError(f"two app service registrations share an as_token (one is {s.id!r})")
        ids.add(s.id)
        tokens.add(s.as_token)


class AppServices:
    """The configured services, looked up by token and by the namespaces they claim."""

    def __init__(self, services: Sequence[AppService] = ()) -> None:
        check_unique(services)
        self.services = list(services)
        # Keyed by the token's digest, like access tokens: a dict lookup on the digest
        # leaks nothing about the token through timing.
        self._by_token = {hash_token(s.as_token): s for s in self.services}
        self._by_id = {s.id: s for s in self.services}

    def __bool__(self) -> bool:
        return bool(self.services)

    def for_token_hash(self, token_hash: str) -> AppService | None:
        return self._by_token.get(token_hash)

    def get(self, service_id: str) -> AppService | None:
        return self._by_id.get(service_id)

    def user_claimed_by(self, user_id: str) -> AppService | None:
        """The service holding `user_id` in an exclusive namespace (or as its bot), if any."""
        return next((s for s in self.services if s.claims_user(user_id)), None)

    def alias_claimed_by(self, alias: str) -> AppService | None:
        return next((s for s in self.services if s.claims_alias(alias)), None)

    def user_owners(self, user_id: str) -> list[AppService]:
        """The services whose user namespaces cover `user_id` (to ask about an unknown user)."""
        return [s for s in self.services if s.url is not None and any(n.matches(user_id) for n in s.users)]

    def alias_owners(self, alias: str) -> list[AppService]:
        return [s for s in self.services if s.url is not None and s.owns_alias(alias)]
