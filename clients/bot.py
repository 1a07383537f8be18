"""The Bot: an encrypted Matrix bot on matrix-nio in a few lines.

    bot = Bot("./bot-store")            # credentials written by `sotto-bot login`

    @bot.command("echo")
    async def echo(ctx: Context, *, text: str) -> None:
        await ctx.reply(text)

    bot.run()

Lifecycle: `connect()` logs in (or restores the login from the store), loads nio's crypto store,
uploads device keys and bootstraps cross-signing; the sync loop then long-polls `/sync` and, after
each response, does the crypto housekeeping (key upload/query/claim, the trust review, to-device
sends) *before* dispatching events, so a handler's reply can always be encrypted to the sender.

Invariants:
- The bot never handles its own events, nor events from before it started (the first sync's
  timeline) unless `process_missed_events` is set.
- In an encrypted room only events that decrypted, from devices the trust policy accepts,
  reach handlers; clear-text messages there are ignored (anyone's homeserver could forge them).
- Handlers run as tasks, at most `max_concurrent_handlers` at once; on shutdown they get
  `shutdown_grace_s` to finish, then are cancelled, and the HTTP session is closed.
- Logs carry event IDs, types, rooms and senders, never message bodies or secrets.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

from nio import (
    AsyncClientConfig,
    Event,
    InviteMemberEvent,
    JoinResponse,
    LoginResponse,
    MatrixRoom,
    MegolmEvent,
    ReactionEvent,
    RoomCreateResponse,
    RoomEncryptedMedia,
    RoomMemberEvent,
    RoomMessage,
    RoomMessageMedia,
    RoomMessageNotice,
    RoomMessageText,
    RoomResolveAliasResponse,
    RoomSendResponse,
    SyncResponse,
    WhoamiResponse,
)
from nio.exceptions import GroupEncryptionError, OlmTrustError, ProtocolError
from nio.store import SqliteStore

from clients import attachments
from clients.backup import KeyBackup
from clients.client import SottoAsyncClient
from clients.commands import Command, CommandError, CommandRegistry, Handler
from clients.config import BotConfig
from clients.context import Context
from clients.crosssigning import CrossSigning
from clients.e2ee_setup import E2EESetup, E2EESetupError
from clients.formatting import text_content
from clients.oauth import OAuthSession
from clients.secrets import SecretStorage
from clients.store import OAUTH_FILE, Credentials, StoreDir, StoreLockedError
from clients.token_refresh import TokenRefresher, TokenRefreshError
from clients.trust import TrustManager, TrustMode, matches
from clients.verification_types import is_verification_event

log = logging.getLogger(__name__)

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])
Hook = Callable[[], Awaitable[None]]
InviteDecider = Callable[[str, str], Awaitable[bool]]


class BotError(Exception):
    """The bot cannot proceed (no credentials, login refused, token revoked, …)."""


class SendError(BotError):
    """The homeserver refused an event or an upload."""


class Bot:
    def __init__(
        self, store_path: str | None = None, *, config: BotConfig | None = None, **options: Any
    ) -> None:
        base = config or BotConfig()
        self.config = base.with_overrides(store_path=store_path, **options)
        self.store = StoreDir(self.config.store_path)
        self.commands = CommandRegistry(prefix=self.config.command_prefix)
        self.client: SottoAsyncClient | None = None
        self.trust: TrustManager | None = None
        self.e2ee: E2EESetup | None = None
        self.ready = asyncio.Event()
        self._message_handlers: list[Handler] = []
        self._reaction_handlers: list[Handler] = []
        self._membership_handlers: list[Handler] = []
        self._file_handlers: list[Handler] = []
        self._invite_deciders: list[InviteDecider] = []
        self._to_device_handlers: list[Callable[[Any], Awaitable[None]]] = []
        self._verification_handlers: list[Callable[[MatrixRoom, Any], Awaitable[None]]] = []
        self._startup_hooks: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.config.max_concurrent_handlers)
        self._trust_lock = asyncio.Lock()
        self._stopping = False
        self._current_sync: asyncio.Future[Any] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._handled_invites: set[str] = set()
        self._key_requests: set[str] = set()
        self._user_id = ""
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @classmethod
    def from_env(cls, **overrides: Any) -> Bot:
        """A bot configured from SOTTO_BOT_* environment variables (see BotConfig.from_env)."""
        return cls(config=BotConfig.from_env(**overrides))

    def configure(self, **changes: Any) -> None:
        """Change settings before the bot connects (the CLI's --store, for instance)."""
        if self.client is not None:
            raise BotError("cannot reconfigure a connected bot")
        self.config = self.config.with_overrides(**changes)
        self.store = StoreDir(self.config.store_path)
        self.commands.prefix = self.config.command_prefix

    @property
    def user_id(self) -> str:
        """The bot's Matrix ID (known once connected, or from the config)."""
        if self.client is not None:
            return str(self.client.user_id)
        if self._user_id or self.config.user_id:
            return self._user_id or str(self.config.user_id)
        raise BotError("the bot's user ID is not known until it connects")

    # -- registration -----------------------------------------------------------------------

    def command(
        self, name: str | None = None, *, help: str | None = None, aliases: tuple[str, ...] = ()
    ) -> Callable[[H], H]:
        """Register `async def f(ctx, ...)` as `!name`; arguments come from its signature."""

        def register(func: H) -> H:
            self.commands.add(name or func.__name__, func, help, aliases)
            return func

        return register

    def on_message(self, func: H) -> H:
        """`async def f(ctx)` for room messages that are not commands (text, notices, files)."""
        self._message_handlers.append(func)
        return func

    def on_reaction(self, func: H) -> H:
        """`async def f(ctx, key, reacts_to)` for `m.reaction` annotations."""
        self._reaction_handlers.append(func)
        return func

    def on_membership(self, func: H) -> H:
        """`async def f(ctx)` for `m.room.member` changes in joined rooms (ctx.event.membership)."""
        self._membership_handlers.append(func)
        return func

    def on_file(self, func: H) -> H:
        """`async def f(ctx)` for files, images, audio and video; `await ctx.download()` for bytes."""
        self._file_handlers.append(func)
        return func

    def on_invite(self, func: InviteDecider) -> InviteDecider:
        """`async def f(room_id, inviter) -> bool` decides invites instead of `allowed_inviters`."""
        self._invite_deciders.append(func)
        return func

    def on_to_device(self, func: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """`async def f(event)` for decrypted to-device events (verification uses this)."""
        self._to_device_handlers.append(func)
        return func

    def on_key_verification(
        self, func: Callable[[MatrixRoom, Any], Awaitable[None]]
    ) -> Callable[[MatrixRoom, Any], Awaitable[None]]:
        """`async def f(room, event)` for in-room key verification events from others.

        Decrypted if they were encrypted, but possibly clear even in an encrypted room (Element
        sends them so), and *before* the trust policy: the sender's device may be the one being
        verified. They never reach message handlers."""
        self._verification_handlers.append(func)
        return func

    def on_startup(self, func: Hook) -> Hook:
        """`async def f()` run once the first sync is done (rooms known), before `ready` is set."""
        self._startup_hooks.append(func)
        return func

    def on_shutdown(self, func: Hook) -> Hook:
        self._shutdown_hooks.append(func)
        return func

    # -- login and crypto setup -------------------------------------------------------------

    def _client_config(self) -> AsyncClientConfig:
        cfg = self.config
        return AsyncClientConfig(
            store=SqliteStore,
            store_sync_tokens=True,
            encryption_enabled=cfg.encryption,
            pickle_key=cfg.pickle_key,
            max_limit_exceeded=cfg.max_rate_limit_retries,
            max_timeouts=None,
            backoff_factor=cfg.backoff_initial_s / 2,
            max_timeout_retry_wait_time=cfg.backoff_max_s,
        )

    async def connect(self) -> SottoAsyncClient:
        """Log in or restore the stored login; load the crypto store; set up keys and trust."""
        if self.client is not None:
            return self.client
        cfg = self.config
        try:
            self.store.lock()
        except StoreLockedError as exc:
            raise BotError(str(exc)) from None
        creds = self.store.load_credentials()
        if creds is not None:
            if cfg.user_id and cfg.user_id != creds.user_id:
                self.store.unlock()
                raise BotError(f"store {self.store.path} belongs to {creds.user_id}, not {cfg.user_id}")
            client = self._new_client(creds.homeserver, creds.user_id, creds.device_id)
            client.restore_login(creds.user_id, creds.device_id, creds.access_token)
            oauth = self.store.read_json(OAUTH_FILE)
            if oauth is not None:  # an OAuth login: its access token expires and is renewed
                client.token_refresher = TokenRefresher(
                    OAuthSession.from_json(oauth, creds.access_token), self.store
                )
        else:
            try:
                client = await self._first_login()
            except BaseException:
                self.store.unlock()
                raise
        self.client = client
        self._user_id = str(client.user_id)
        client.before_share = self._before_share
        if cfg.encryption:
            self.trust = TrustManager(client, self.store, cfg.trust)
            if client.should_upload_keys:
                await client.keys_upload()
            self.e2ee = E2EESetup(client, self.store, cfg)
            try:
                await self.e2ee.run()
            except E2EESetupError as exc:
                raise BotError(str(exc)) from None
        log.info("connected as %s (device %s)", client.user_id, client.device_id)
        return client

    def _new_client(self, homeserver: str, user_id: str = "", device_id: str = "") -> SottoAsyncClient:
        return SottoAsyncClient(
            homeserver.rstrip("/"),
            user_id,
            device_id or "",
            store_path=str(self.store.path),
            config=self._client_config(),
        )

    async def _first_login(self) -> SottoAsyncClient:
        cfg = self.config
        if not cfg.homeserver:
            raise BotError(f"no login stored in {self.store.path}: run `sotto-bot login` or set a homeserver")
        client = self._new_client(cfg.homeserver, cfg.user_id or "")
        if cfg.access_token:
            client.access_token = cfg.access_token
            who = await client.whoami()
            if not isinstance(who, WhoamiResponse) or not who.device_id:
                await client.close()
                raise BotError("the access token was refused (or the server gave no device ID)")
            client.restore_login(who.user_id, who.device_id, cfg.access_token)
        elif cfg.password and cfg.user_id:
            resp = await client.login(cfg.password, device_name=cfg.device_name)
            if not isinstance(resp, LoginResponse):
                await client.close()
                raise BotError(f"login failed: {getattr(resp, 'status_code', '')}")
        else:
            await client.close()
            raise BotError("give an access token, or a user ID and password, to log in")
        self.store.save_credentials(
            Credentials(cfg.homeserver.rstrip("/"), client.user_id, client.device_id, client.access_token)
        )
        return client

    async def restore_key_backup(self, recovery_key: str) -> int:
        """Import the sessions of the account's key backup (after losing the store, say)."""
        return await self._e2ee().restore_key_backup(recovery_key)

    def _e2ee(self) -> E2EESetup:
        if self.e2ee is None:
            raise BotError("encryption is not set up (not connected, or encryption=False)")
        return self.e2ee

    @property
    def cross_signing(self) -> CrossSigning | None:
        return self.e2ee.cross_signing if self.e2ee else None

    @property
    def backup(self) -> KeyBackup | None:
        return self.e2ee.backup if self.e2ee else None

    @property
    def secret_storage(self) -> SecretStorage | None:
        return self.e2ee.secret_storage if self.e2ee else None

    async def _before_share(self, room_id: str) -> None:
        await self.review_trust()

    async def review_trust(self) -> None:
        if self.trust is None:
            return
        async with self._trust_lock:
            await self.trust.review()

    # -- running ----------------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGINT/SIGTERM, then shut down cleanly."""
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        asyncio.run(self.run_async())

    async def run_async(self) -> None:
        """`serve()` that stops cleanly on SIGINT/SIGTERM, inside an already running event loop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with suppress(NotImplementedError):
                loop.add_signal_handler(sig, self.request_stop)
        await self.serve()

    async def serve(self) -> None:
        """Connect and sync until `stop()`; always cleans up."""
        try:
            await self.connect()
            if "help" not in self.commands.commands:
                self.commands.add("help", self._help, "Show the commands, or the usage of one.")
            self._loop_task = asyncio.create_task(self._sync_loop())
            try:
                await self._loop_task
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
        finally:
            self._loop_task = None
            await self._cleanup()

    def request_stop(self) -> None:
        """Stop after the current step; a stuck step (homeserver gone) is cancelled after the grace time."""
        self._stopping = True
        if self._current_sync is not None:
            self._current_sync.cancel()
        loop_task = self._loop_task
        if loop_task is not None:
            asyncio.get_running_loop().call_later(self.config.shutdown_grace_s, loop_task.cancel)

    async def stop(self) -> None:
        self.request_stop()

    async def _sync_loop(self) -> None:
        client = self.require_client()
        first = True
        failures = 0
        resumed = bool(client.loaded_sync_token)
        while not self._stopping:
            # A resumed first sync asks for full state: nio keeps no room state across restarts.
            self._current_sync = asyncio.ensure_future(
                client.sync(
                    timeout=0 if first else self.config.sync_timeout_ms,
                    full_state=True if first and resumed else None,
                )
            )
            try:
                resp = await self._current_sync
            except asyncio.CancelledError:
                if self._stopping:
                    break
                raise
            except TokenRefreshError as exc:
                raise BotError(str(exc)) from None
            finally:
                self._current_sync = None
            if not isinstance(resp, SyncResponse):
                if getattr(resp, "status_code", None) in ("M_UNKNOWN_TOKEN", "M_FORBIDDEN"):
                    raise BotError(f"the homeserver rejected the bot's access token ({resp.status_code})")
                failures += 1
                delay = self._backoff(failures)
                log.warning("sync failed (%s); retrying in %.1fs", getattr(resp, "status_code", "?"), delay)
                await self.sleep(delay)
                continue
            failures = 0
            await self._after_sync(resp, first)
            if first:
                first = False
                for hook in self._startup_hooks:
                    await hook()
                self.ready.set()
                log.info("ready: %s is in %d rooms", client.user_id, len(client.rooms))

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with full jitter, capped."""
        cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** min(failures - 1, 16))
        return random.uniform(cap / 2, cap)

    async def _after_sync(self, resp: SyncResponse, first: bool) -> None:
        client = self.require_client()
        if client.olm:
            await self._crypto_housekeeping()
        for to_device in resp.to_device_events:
            for on_to_device in self._to_device_handlers:
                self._spawn(on_to_device(to_device))
        for room_id, info in resp.rooms.invite.items():
            await self._handle_invite(room_id, info.invite_state)
        if first and not self.config.process_missed_events:
            return
        for room_id, info in resp.rooms.join.items():
            room = client.rooms.get(room_id)
            if room is None:
                continue
            for event in info.timeline.events:
                self._dispatch(room, event)

    async def _crypto_housekeeping(self) -> None:
        client = self.require_client()
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        await self.review_trust()
        if client.should_claim_keys:
            await client.keys_claim(client.get_users_for_key_claiming())
        await client.send_to_device_messages()
        if self.e2ee is not None:
            await self.e2ee.after_sync()

    async def _cleanup(self) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.shutdown_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        for hook in self._shutdown_hooks:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        if self.client is not None:
            await self.client.close()
            store = getattr(self.client, "store", None)
            database = getattr(store, "database", None)
            if database is not None:
                database.close()
            self.client = None
        self.store.unlock()
        self.ready.clear()
        self._stopping = False
        log.info("bot stopped")

    # -- dispatch -----------------------------------------------------------------------------

    async def _handle_invite(self, room_id: str, invite_state: list[Any]) -> None:
        if room_id in self._handled_invites:
            return
        self._handled_invites.add(room_id)
        client = self.require_client()
        inviter = next(
            (
                e.sender
                for e in invite_state
                if isinstance(e, InviteMemberEvent)
                and e.state_key == client.user_id
                and e.membership == "invite"
            ),
            None,
        )
        if inviter is None:
            return
        if await self._invite_allowed(room_id, inviter):
            resp = await client.join(room_id)
            if isinstance(resp, JoinResponse):
                log.info("joined %s (invited by %s)", room_id, inviter)
            else:
                log.warning("could not join %s: %s", room_id, getattr(resp, "status_code", "?"))
                self._handled_invites.discard(room_id)
        else:
            log.info("declining invite to %s from %s (not allowed)", room_id, inviter)
            if self.config.reject_disallowed_invites:
                await client.room_leave(room_id)

    async def _invite_allowed(self, room_id: str, inviter: str) -> bool:
        if self._invite_deciders:
            return all([await decide(room_id, inviter) for decide in self._invite_deciders])
        patterns = self.config.allowed_inviters
        if patterns is None:
            patterns = ("@*:" + self.user_id.split(":", 1)[1],)
        return matches(inviter, patterns)

    def _dispatch(self, room: MatrixRoom, event: Event) -> None:
        client = self.require_client()
        if event.sender == client.user_id:
            return
        if isinstance(event, MegolmEvent):
            self._on_undecryptable(room, event)
            return
        if isinstance(event, RoomMemberEvent):
            self._run_handlers(self._membership_handlers, Context(self, room, event))
            return
        if is_verification_event(str(event.source.get("type", "")), event.source.get("content")):
            # Clear or encrypted alike: Element (matrix-rust-sdk) sends them in clear even in
            # encrypted rooms, and SAS does not rely on the channel (the people compare the SAS).
            for on_verification in self._verification_handlers:
                self._spawn(on_verification(room, event))
            return
        if not isinstance(event, RoomMessage | ReactionEvent):
            return
        if room.encrypted and not getattr(event, "decrypted", False):
            log.info(
                "ignoring unencrypted %s %s in encrypted room %s",
                event.source.get("type"),
                event.event_id,
                room.room_id,
            )
            return
        if (
            getattr(event, "decrypted", False)
            and self.trust is not None
            and not self.trust.sender_trusted(event.sender, getattr(event, "sender_key", None))
        ):
            log.info(
                "ignoring %s from untrusted device of %s in %s", event.event_id, event.sender, room.room_id
            )
            return
        ctx = Context(self, room, event)
        if self.config.log_message_bodies:
            log.debug("event %s body: %r", event.event_id, ctx.body)
        if isinstance(event, ReactionEvent):
            self._run_handlers(self._reaction_handlers, ctx, event.key, event.reacts_to)
            return
        if isinstance(event, RoomMessageText) and not isinstance(event, RoomMessageNotice):
            match = self.commands.match(event.body)
            if match is not None:
                self._spawn(self._run_command(ctx, *match))
                return
        if isinstance(event, RoomMessageMedia | RoomEncryptedMedia):
            self._run_handlers(self._file_handlers, ctx)
        self._run_handlers(self._message_handlers, ctx)

    def _on_undecryptable(self, room: MatrixRoom, event: MegolmEvent) -> None:
        log.warning(
            "could not decrypt %s from %s in %s (session %s)",
            event.event_id,
            event.sender,
            room.room_id,
            event.session_id,
        )
        client = self.require_client()
        if event.session_id and event.session_id not in self._key_requests:
            self._key_requests.add(event.session_id)
            self._spawn(self._request_key(client, event))

    async def _request_key(self, client: SottoAsyncClient, event: MegolmEvent) -> None:
        with suppress(Exception):
            await client.request_room_key(event)

    def _run_handlers(self, handlers: list[Handler], ctx: Context, *args: Any) -> None:
        for handler in handlers:
            self._spawn(self._call_handler(handler, ctx, *args))

    async def _call_handler(self, handler: Handler, ctx: Context, *args: Any) -> None:
        try:
            await handler(ctx, *args)
        except Exception:
            log.exception("handler %s failed on %s", getattr(handler, "__name__", handler), ctx.event_id)

    async def _run_command(self, ctx: Context, command: Command, argtext: str) -> None:
        prefix = self.commands.prefix
        try:
            args, kwargs = command.parse(argtext)
        except CommandError as exc:
            await ctx.reply(f"{exc}. Usage: `{command.usage(prefix)}`")
            return
        log.info("command %s from %s in %s (%s)", command.name, ctx.sender, ctx.room_id, ctx.event_id)
        try:
            await command.handler(ctx, *args, **kwargs)
        except CommandError as exc:
            await ctx.reply(str(exc))
        except Exception:
            log.exception("command %s failed on %s", command.name, ctx.event_id)
            with suppress(Exception):
                await ctx.reply(f"Sorry, `{prefix}{command.name}` failed.")

    async def _help(self, ctx: Context, name: str = "") -> None:
        await ctx.reply(self.commands.help_text(name or None))

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def bounded() -> None:
            async with self._slots:
                await coro

        task = asyncio.create_task(bounded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- acting -------------------------------------------------------------------------------

    def require_client(self) -> SottoAsyncClient:
        """The connected nio client (for anything the Bot does not wrap)."""
        if self.client is None:
            raise BotError("the bot is not connected")
        return self.client

    async def send_content(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Send any event, encrypted when the room is; returns its event ID."""
        client = self.require_client()
        if client.olm and room_id not in client.rooms:
            raise SendError(f"room {room_id} is not known yet (not joined, or not synced)")
        try:
            resp = await client.room_send(
                room_id,
                event_type,
                content,
                ignore_unverified_devices=self.config.trust.mode is TrustMode.TOFU,
            )
        except (OlmTrustError, ProtocolError, GroupEncryptionError) as exc:
            # e.g. a device the policy has not decided on yet: fail closed rather than leak the key.
            raise SendError(f"not sent to {room_id}: {exc}") from exc
        if not isinstance(resp, RoomSendResponse):
            raise SendError(f"sending to {room_id} failed: {getattr(resp, 'status_code', '')}")
        return str(resp.event_id)

    async def send_text(
        self,
        room_id: str,
        text: str,
        *,
        markdown: bool | None = None,
        notice: bool | None = None,
        relates_to: dict[str, Any] | None = None,
    ) -> str:
        """Send text (markdown → HTML by default); bots' messages are notices unless asked."""
        as_notice = self.config.replies_as_notices if notice is None else notice
        content = text_content(
            text,
            markdown=self.config.markdown if markdown is None else markdown,
            msgtype="m.notice" if as_notice else "m.text",
        )
        if relates_to:
            content["m.relates_to"] = relates_to
        return await self.send_content(room_id, "m.room.message", content)

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        return await self.send_content(room_id, "m.reaction", content)

    async def send_file(
        self,
        room_id: str,
        data: bytes,
        filename: str,
        mimetype: str | None = None,
        *,
        relates_to: dict[str, Any] | None = None,
    ) -> str:
        """Upload a file (encrypted in encrypted rooms) and post it; returns the event ID."""
        client = self.require_client()
        room = client.rooms.get(room_id)
        encrypted = bool(client.olm and room is not None and room.encrypted)
        try:
            content = await attachments.upload_file(
                client, data, filename, mimetype or attachments.guess_mimetype(filename), encrypted
            )
        except attachments.AttachmentError as exc:
            raise SendError(str(exc)) from exc
        if relates_to:
            content["m.relates_to"] = relates_to
        return await self.send_content(room_id, "m.room.message", content)

    async def download(self, attachment: attachments.Attachment) -> bytes:
        return await attachments.download_file(
            self.require_client(), attachment, self.config.max_download_bytes
        )

    @asynccontextmanager
    async def typing(self, room_id: str, timeout_ms: int = 30_000) -> AsyncIterator[None]:
        """Show "typing…" while the block runs, refreshed before the server's timeout."""
        client = self.require_client()

        async def keep_typing() -> None:
            while True:
                await client.room_typing(room_id, typing_state=True, timeout=timeout_ms)
                await asyncio.sleep(timeout_ms / 1000 * 0.66)

        task = asyncio.create_task(keep_typing())
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            with suppress(Exception):
                await client.room_typing(room_id, typing_state=False)

    async def join(self, room_id_or_alias: str) -> str:
        client = self.require_client()
        resp = await client.join(room_id_or_alias)
        if not isinstance(resp, JoinResponse):
            raise SendError(f"could not join {room_id_or_alias}: {getattr(resp, 'status_code', '')}")
        return str(resp.room_id)

    async def resolve_room(self, room: str) -> str:
        """A room ID for a room ID or `#alias:server`."""
        if not room.startswith("#"):
            return room
        resp = await self.require_client().room_resolve_alias(room)
        if not isinstance(resp, RoomResolveAliasResponse):
            raise BotError(f"unknown room alias {room}")
        return str(resp.room_id)

    async def create_room(
        self,
        *,
        name: str | None = None,
        invite: tuple[str, ...] = (),
        encrypted: bool = True,
        direct: bool = False,
    ) -> str:
        initial_state = (
            [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]
            if encrypted
            else []
        )
        resp = await self.require_client().room_create(
            name=name, invite=invite, initial_state=initial_state, is_direct=direct
        )
        if not isinstance(resp, RoomCreateResponse):
            raise SendError(f"could not create a room: {getattr(resp, 'status_code', '')}")
        return str(resp.room_id)

    async def sync_once(self) -> None:
        """One sync plus crypto housekeeping, without dispatching (scripts: `send`, `verify`)."""
        client = self.require_client()
        resp = await client.sync(timeout=0, full_state=True)
        if not isinstance(resp, SyncResponse):
            raise BotError(f"sync failed: {getattr(resp, 'status_code', '')}")
        if client.olm:
            await self._crypto_housekeeping()

    async def close(self) -> None:
        await self._cleanup()
