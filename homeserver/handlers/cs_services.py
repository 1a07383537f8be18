"""Composition root for the Client-Server modules beyond the core (media, push, relations,
presence, directory, search ...).

Their API modules share one set of handlers per application. `services(app, hs)` builds
it on first use, stores it on the app under a typed key, and wires it into the core
exactly once: an event listener on `hs.creator`, a /sync extension, background
services.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from homeserver.handlers.email_notifs import EmailNotifier
from homeserver.handlers.guests import GuestHandler
from homeserver.handlers.mailer import Mailer
from homeserver.handlers.media import MediaRepository
from homeserver.handlers.presence import PresenceHandler
from homeserver.handlers.push import PushHandler
from homeserver.handlers.pusher_delivery import NotifyingPushActionStore, PusherDelivery
from homeserver.handlers.relations import RelationsHandler
from homeserver.handlers.room_upgrade import RoomUpgradeHandler
from homeserver.handlers.search import SearchHandler
from homeserver.handlers.spaces import SpacesHandler
from homeserver.handlers.user_directory import UserDirectoryHandler
from homeserver.server import HomeServer
from homeserver.storage.email_notifs import EmailNotifStore
from homeserver.storage.media import MediaStore
from homeserver.storage.presence import PresenceStore
from homeserver.storage.push import PusherStore, PushRuleStore
from homeserver.storage.relations import RelationsStore
from homeserver.storage.search import SearchStore
from homeserver.storage.threepids import ThreepidStore
from homeserver.storage.user_directory import UserDirectoryStore
from homeserver.sync.cs_extension import (
    ClientServerSyncExtension,
    KnockSection,
    PresenceSection,
    RelationBundles,
)


@dataclass
class ClientServerServices:
    media: MediaRepository
    relations_store: RelationsStore
    push: PushHandler
    pusher_delivery: PusherDelivery
    relations: RelationsHandler
    presence: PresenceHandler
    user_directory: UserDirectoryHandler
    search: SearchHandler
    upgrades: RoomUpgradeHandler
    spaces: SpacesHandler
    guests: GuestHandler
    sync_extension: ClientServerSyncExtension
    # With email.enable_notifs: the sender of email notifications.
    email_notifier: EmailNotifier | None = None


CS_KEY = web.AppKey("client_server_services", ClientServerServices)


def build_services(hs: HomeServer) -> ClientServerServices:
    config = hs.config
    media = MediaRepository(
        MediaStore(hs.db),
        hs.clock,
        hs.server_name,
        config.resolve_path(config.media_store_path),
        config.limits.max_upload_bytes,
    )
    relations_store = RelationsStore(hs.db, hs.events)
    # Recorded notifications also go to push gateways (queued; see pusher_delivery).
    push_actions = NotifyingPushActionStore(hs.db)
    pusher_store = PusherStore(hs.db, hs.invalidations)
    delivery = PusherDelivery(hs.db, hs.events, push_actions, pusher_store, hs.clock, config.push)
    delivery.tracing = hs.tracing
    push_actions.delivery = delivery
    threepids = ThreepidStore(hs.db)
    email_notifs = EmailNotifStore(hs.db)
    push = PushHandler(
        hs.events,
        relations_store,
        PushRuleStore(hs.db),
        push_actions,
        pusher_store,
        hs.notifier,
        hs.clock,
        hs.server_name,
        hs.invalidations,
        # Without email, no address can be on an account: email pushers are stored unchecked.
        threepids=threepids if config.email.enabled else None,
        email_notifs=email_notifs,
    )
    email_notifier = None
    if config.email.enable_notifs:
        email_notifier = EmailNotifier(
            hs, email_notifs, pusher_store, threepids, Mailer(config.email), config.email
        )
    relations = RelationsHandler(relations_store, hs.events, hs.messages, hs.clock)
    hs.messages.bundler = relations.bundle
    presence = PresenceHandler(
        PresenceStore(hs.db), hs.events, hs.accounts, hs.notifier, hs.clock, hs.server_name
    )
    extension = ClientServerSyncExtension(
        push,
        push,
        [RelationBundles(relations), PresenceSection(presence), KnockSection(hs.events)],
    )
    return ClientServerServices(
        media=media,
        relations_store=relations_store,
        push=push,
        pusher_delivery=delivery,
        relations=relations,
        presence=presence,
        user_directory=UserDirectoryHandler(
            UserDirectoryStore(hs.db), search_all_users=config.user_directory.search_all_users
        ),
        search=SearchHandler(SearchStore(hs.db), hs.events, hs.messages, hs.clock),
        spaces=SpacesHandler(hs.events, hs.rooms),
        guests=GuestHandler(hs.events, hs.accounts, hs.rooms, hs.server_name),
        upgrades=RoomUpgradeHandler(hs.events, hs.creator, hs.rooms, hs.aliases, hs.accounts, hs.server_name),
        sync_extension=extension,
        email_notifier=email_notifier,
    )


def services(app: web.Application, hs: HomeServer) -> ClientServerServices:
    existing = app.get(CS_KEY)
    if existing is not None:
        return existing
    svc = build_services(hs)
    app[CS_KEY] = svc
    # Push actions and the search index of local messages are written in the messages' own
    # transaction (batch hooks); the listeners handle every other event.
    hs.creator.add_batch_hook(svc.push.prepare_messages, replaces=svc.push.on_event)
    hs.creator.listeners.append(svc.presence.on_event)
    hs.creator.listeners.append(svc.user_directory.on_event)
    hs.creator.listeners.append(svc.guests.on_event)
    hs.creator.add_batch_hook(svc.search.prepare_messages, replaces=svc.search.on_event)
    hs.background.append(svc.presence)
    hs.background.append(svc.pusher_delivery)
    if svc.email_notifier is not None:
        hs.background.append(svc.email_notifier)
    hs.sync_extensions.append(svc.sync_extension)
    hs.sync.park_hooks.append(svc.presence.user_syncing)
    return svc
