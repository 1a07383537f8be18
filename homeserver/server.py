"""The composition root: builds every store and handler with explicit dependencies.

`HomeServer` is a plain record of the wired components; API modules read the
handlers they need from it at route registration. Nothing looks services up
at request time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from signedjson.types import SigningKey

from homeserver.appservice.queries import AppServiceQueries
from homeserver.appservice.registration import AppServices, load_registrations
from homeserver.clock import Clock
from homeserver.config import Config
from homeserver.events import decode_signing_key, encode_signing_key, generate_signing_key
from homeserver.handlers.auth import AuthHandler, PasswordHasher
from homeserver.handlers.ephemeral import ReceiptHandler, TypingHandler
from homeserver.handlers.erasure import ErasureFilter
from homeserver.handlers.event_creation import EventCreator
from homeserver.handlers.messages import MessageHandler
from homeserver.handlers.rooms import RoomHandler
from homeserver.invalidation import Invalidations
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.accounts import AccountStore
from homeserver.storage.aliases import AliasStore
from homeserver.storage.engine import Database
from homeserver.storage.events import EventStore
from homeserver.storage.filters import FilterStore
from homeserver.storage.receipts import ReceiptStore
from homeserver.sync.handler import SyncHandler
from homeserver.sync.notifier import Notifier
from homeserver.tracing import DISABLED, Tracing, build_tracing

log = logging.getLogger(__name__)


def load_or_create_signing_key(path: str, version: str | None = None) -> SigningKey:
    """The key at `path`, created if missing. `version`: the key ID's version the key must
    have (a Policy Server's key); otherwise a new key gets a random one."""
    if os.path.exists(path):
        with open(path) as f:
            key = decode_signing_key(f.read().strip())
        if version is not None and key.version != version:
            raise ValueError(f"{path}: the key's version must be {version!r}")
        return key
    key = generate_signing_key(version or "a_" + os.urandom(3).hex())
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # The private key is readable by its owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(encode_signing_key(key) + "\n")
    log.info("generated a new signing key at %s", path)
    return key


@dataclass
class HomeServer:
    config: Config
    clock: Clock
    db: Database
    signing_key: SigningKey
    notifier: Notifier
    invalidations: Invalidations
    accounts: AccountStore
    events: EventStore
    auth: AuthHandler
    passwords: PasswordHasher
    creator: EventCreator
    filters: FilterStore
    account_data: AccountDataStore
    aliases: AliasStore
    rooms: RoomHandler
    messages: MessageHandler
    typing: TypingHandler
    receipts: ReceiptHandler
    sync: SyncHandler
    # Erased users' events pruned for their readers (clients and other servers).
    erasure: ErasureFilter
    appservices: AppServices = field(default_factory=AppServices)
    # Asks the services about unknown users and aliases in their namespaces (if any are configured).
    appservice_queries: AppServiceQueries | None = None
    # Extension points filled by area modules' setup functions (see homeserver.app):
    # extra /sync sections (to-device, device lists ...) and background services.
    sync_extensions: list[Any] = field(default_factory=list)
    background: list[Any] = field(default_factory=list)
    # OpenTelemetry spans (homeserver/tracing.py); a no-op unless `tracing.enabled`.
    tracing: Tracing = DISABLED

    @property
    def server_name(self) -> str:
        return self.config.server_name


def build_homeserver(config: Config, clock: Clock | None = None) -> HomeServer:
    clock = clock or Clock()
    db = Database(config.database.url, config.base_dir, pool_size=config.database.pool_size)
    index = config.workers.index
    tracing = build_tracing(
        config.tracing, config.server_name, None if index is None else f"{config.server_name}/worker-{index}"
    )
    db.tracing = tracing
    signing_key = load_or_create_signing_key(config.resolve_path(config.signing_key_path))
    notifier = Notifier()
    invalidations = Invalidations()
    accounts = AccountStore(db, invalidations)
    # The state cache is only correct while this process is the rooms' only writer: always on
    # SQLite, and on PostgreSQL when it runs as one process (no Redis, not one of several
    # workers; processes sharing a database without Redis are unsupported: their syncs never wake).
    db.sole_writer = db.shared and (
        not config.redis.enabled and config.workers.count <= 1 and config.workers.index is None
    )
    events = EventStore(db, cache_state=db.exclusive)
    events.clock = clock
    erasure = ErasureFilter(accounts.erased, events)
    creator = EventCreator(events, notifier, clock, config.server_name, signing_key)
    creator.tracing = tracing
    aliases = AliasStore(db)
    account_data = AccountDataStore(db)
    typing = TypingHandler(notifier, clock, invalidations)
    receipts = ReceiptHandler(ReceiptStore(db), events, notifier, clock)
    sync_extensions: list[Any] = []
    appservices = AppServices(load_registrations(config.app_services, config.server_name, config.base_dir))
    queries = AppServiceQueries(appservices, config.server_name, accounts) if appservices else None
    rooms = RoomHandler(
        events,
        creator,
        aliases,
        accounts,
        config.server_name,
        config.default_room_version,
        account_data,
        profile_on_invite=config.profiles.include_profile_data_on_invite,
    )
    if queries is not None:
        queries.tracing = tracing
        aliases.on_missing = queries.alias
        rooms.user_exists = queries.user_exists
    return HomeServer(
        config=config,
        clock=clock,
        db=db,
        signing_key=signing_key,
        notifier=notifier,
        invalidations=invalidations,
        accounts=accounts,
        events=events,
        auth=AuthHandler(
            accounts,
            clock,
            invalidations,
            config.sessions.refreshable_access_token_lifetime_ms,
            appservices,
        ),
        passwords=PasswordHasher(config.bcrypt_rounds),
        creator=creator,
        filters=FilterStore(db),
        account_data=account_data,
        aliases=aliases,
        rooms=rooms,
        messages=MessageHandler(db, events, clock, erasure),
        typing=typing,
        receipts=receipts,
        sync=SyncHandler(
            db, events, account_data, typing, receipts, notifier, clock, sync_extensions, erasure
        ),
        erasure=erasure,
        sync_extensions=sync_extensions,
        appservices=appservices,
        appservice_queries=queries,
        tracing=tracing,
    )
