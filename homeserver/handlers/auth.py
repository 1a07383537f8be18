"""Authentication: access tokens, requesters and password hashing.

Tokens are random 256-bit strings handed to the client once; only their
SHA-256 digest is stored. Lookups are cached in a small bounded LRU so the
hot path (every authenticated request) costs no database round trip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import bcrypt
from aiohttp import web

from homeserver.clock import Clock
from homeserver.errors import Codes, MatrixError
from homeserver.handlers.acting import APPSERVICE, act_as
from homeserver.invalidation import InvalidatedCache, Invalidations
from homeserver.storage.accounts import AccountStore, TokenInfo

if TYPE_CHECKING:
    from homeserver.appservice.registration import AppService, AppServices

_TOKEN_CACHE_SIZE = 10_000


@dataclass(slots=True, frozen=True)
class Requester:
    user_id: str
    device_id: str
    is_admin: bool = False
    is_guest: bool = False
    token_hash: str = ""
    # Suspended accounts can read, leave and redact their own events, not take part
    # (`refuse_if_suspended`); locked ones never get a Requester (see get_requester).
    suspended: bool = False
    # The application service acting (with its as_token) for this user, if any. Its
    # requests may have no device (device_id "") unless it names one (`device_id=`).
    appservice: str | None = None
    # Shadow-banned by a server admin: what this user sends answers success and goes
    # nowhere (homeserver/handlers/shadow_ban.py).
    shadow_banned: bool = False


REQUESTER_KEY = web.RequestKey("sotto.requester", Requester)


def refuse_if_suspended(requester: Requester) -> None:
    """403 M_USER_SUSPENDED for what a suspended account may not do (join, invite, send...)."""
    if requester.suspended:
        raise MatrixError(403, Codes.USER_SUSPENDED, "You cannot perform this action while suspended.")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def generate_token(prefix: str = "syt") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def generate_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


def _check_password_sync(password: str, password_hash: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode()[:72], password_hash.encode())
    except ValueError:
        return False


class PasswordHasher:
    """bcrypt in a worker thread: it is deliberately slow and must not block the loop."""

    def __init__(self, rounds: int = 12) -> None:
        self.rounds = rounds

    async def hash(self, password: str) -> str:
        rounds = self.rounds

        def work() -> str:
            return bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(rounds=rounds)).decode()

        return await asyncio.to_thread(work)

    async def check(self, password: str, password_hash: str | None) -> bool:
        if not password_hash:
            return False
        return await asyncio.to_thread(_check_password_sync, password, password_hash)


# Invalidation topics: a list of token hashes, a list of user IDs (all their tokens).
TOKENS_TOPIC = "auth.tokens"
USERS_TOPIC = "auth.users"


class AuthHandler:
    def __init__(
        self,
        store: AccountStore,
        clock: Clock,
        invalidations: Invalidations | None = None,
        refresh_lifetime_ms: int | None = None,
        appservices: AppServices | None = None,
    ) -> None:
        self.store = store
        self.appservices = appservices
        self.clock = clock
        # How long refreshable access tokens last; None: refresh tokens are not offered.
        self.refresh_lifetime_ms = refresh_lifetime_ms
        self._cache: InvalidatedCache[str, TokenInfo] = InvalidatedCache(_TOKEN_CACHE_SIZE)
        # Other workers cache tokens too: a revocation here must reach their caches.
        self._peers = invalidations or Invalidations()
        self._peers.subscribe(TOKENS_TOPIC, self._cache.drop)
        self._peers.subscribe(USERS_TOPIC, self._drop_users)
        self._peers.on_reset(self._cache.clear)

    async def create_session(
        self, user_id: str, device_id: str | None, display_name: str | None
    ) -> tuple[str, str]:
        """Create (or reuse) a device and a new access token. Returns (token, device_id)."""
        session = await self.start_session(user_id, device_id, display_name, refreshable=False)
        return session["access_token"], session["device_id"]

    async def start_session(
        self,
        user_id: str,
        device_id: str | None,
        display_name: str | None,
        *,
        refreshable: bool,
        lifetime_ms: int | None = None,
    ) -> dict[str, Any]:
        """A device and its tokens, as login and registration answer: `access_token` and
        `device_id`; with `refreshable` (the client sent `refresh_token: true`) and refresh
        tokens enabled, also `refresh_token` and `expires_in_ms`. `lifetime_ms` overrides
        the configured lifetime (the OAuth 2.0 API always issues refresh tokens)."""
        device_id = device_id or generate_device_id()
        now = self.clock.time_ms()
        await self.store.upsert_device(user_id, device_id, display_name, now)
        # Logging in again with an existing device_id replaces that device's old tokens.
        replaced = await self.store.delete_device_tokens(user_id, device_id)
        if replaced:
            self.invalidate(replaced)
        token = generate_token()
        out: dict[str, Any] = {"access_token": token, "device_id": device_id}
        lifetime = lifetime_ms or self.refresh_lifetime_ms
        if refreshable and lifetime is not None:
            refresh = generate_token("syr")
            await self.store.add_refreshable_token(
                hash_token(token), hash_token(refresh), user_id, device_id, now, now + lifetime
            )
            out.update(refresh_token=refresh, expires_in_ms=lifetime)
        else:
            await self.store.add_access_token(hash_token(token), user_id, device_id, now)
        return out

    async def refresh(self, refresh_token: str, lifetime_ms: int | None = None) -> dict[str, Any]:
        """POST /refresh: a new access token and refresh token for `refresh_token`, which
        stays valid until the new pair is first used (a client that lost this answer may ask
        again; the pair it was given then is dropped). `lifetime_ms` as in start_session."""
        old = hash_token(refresh_token)
        info = await self.store.get_refresh_token(old)
        unknown = MatrixError(401, Codes.UNKNOWN_TOKEN, "Unknown refresh token", soft_logout=False)
        if info is None or info.deactivated:
            raise unknown
        if info.locked:
            raise MatrixError(401, Codes.USER_LOCKED, "This account has been locked", soft_logout=True)
        lifetime = lifetime_ms or self.refresh_lifetime_ms
        if lifetime is None:
            # Refresh tokens were turned off since: log in again, for a token that lasts.
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Refresh tokens are disabled", soft_logout=True)
        token, refresh = generate_token(), generate_token("syr")
        now = self.clock.time_ms()
        dropped = await self.store.trade_refresh_token(
            old, info.next_hash, hash_token(token), hash_token(refresh), now, now + lifetime
        )
        if dropped is None:
            raise unknown  # traded or revoked meanwhile, by a concurrent request
        if dropped:
            self.invalidate(dropped)
        return {"access_token": token, "refresh_token": refresh, "expires_in_ms": lifetime}

    def invalidate(self, token_hashes: list[str]) -> None:
        """Forget tokens just deleted from the database, here and on every other worker."""
        self._cache.drop(token_hashes)
        self._peers.broadcast(TOKENS_TOPIC, list(token_hashes))

    def invalidate_user(self, user_id: str) -> None:
        """Forget every cached token of a user (here and on every other worker)."""
        self._drop_users([user_id])
        self._peers.broadcast(USERS_TOPIC, [user_id])

    def _drop_users(self, user_ids: Any) -> None:
        users = set(user_ids)
        self._cache.drop_where(lambda info: info.user_id in users)

    async def token_owner(self, token: str) -> TokenInfo | None:
        """Who an access token belongs to (None if it is unknown or expired)."""
        info = await self._lookup(hash_token(token))
        if info is None or (info.expires_ts is not None and self.clock.time_ms() >= info.expires_ts):
            return None
        return info

    async def _lookup(self, token_hash: str) -> TokenInfo | None:
        info = self._cache.get(token_hash)
        if info is not None:
            return info
        generation = self._cache.generation
        info = await self.store.get_token(token_hash)
        if info is not None and info.revokes is not None:
            # The first use of a token traded for a refresh token: the old one goes.
            dropped = await self.store.revoke_refresh_token(info.revokes, self.clock.time_ms())
            if dropped:
                self.invalidate(dropped)
            info = dataclasses.replace(info, revokes=None)
        if info is not None:
            self._cache.put(token_hash, info, generation)
        return info

    @staticmethod
    def extract_token(request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Invalid Authorization header", soft_logout=False)
        # Tokens in query strings are not accepted (MSC4127): they end up in proxy logs.
        return None

    async def get_requester(
        self, request: web.Request, *, allow_guest: bool = False, allow_locked: bool = False
    ) -> Requester:
        """The authenticated caller. A locked account is refused (401 M_USER_LOCKED, a soft
        logout: its tokens stay valid for when it is unlocked) unless `allow_locked`,
        which only logging out uses."""
        cached: Requester | None = request.get(REQUESTER_KEY)
        if cached is not None:
            return cached
        token = self.extract_token(request)
        if token is None:
            if "access_token" in request.query:
                raise MatrixError(
                    401,
                    Codes.MISSING_TOKEN,
                    "Access tokens in the query string are not accepted; use the Authorization header",
                )
            raise MatrixError(401, Codes.MISSING_TOKEN, "Missing access token")
        th = hash_token(token)
        service = self.appservices.for_token_hash(th) if self.appservices else None
        if service is not None:
            requester = await self._appservice_requester(request, service, th)
            request[REQUESTER_KEY] = requester
            return requester
        info = await self._lookup(th)
        if info is None:
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Unknown access token", soft_logout=False)
        if info.deactivated:
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "User is deactivated", soft_logout=False)
        if info.expires_ts is not None and self.clock.time_ms() >= info.expires_ts:
            raise MatrixError(401, Codes.UNKNOWN_TOKEN, "Access token has expired", soft_logout=True)
        if info.locked and not allow_locked:
            raise MatrixError(401, Codes.USER_LOCKED, "This account has been locked", soft_logout=True)
        if info.is_guest and not allow_guest:
            raise MatrixError(403, Codes.GUEST_ACCESS_FORBIDDEN, "Guest access not allowed")
        requester = Requester(
            info.user_id,
            info.device_id,
            info.is_admin,
            info.is_guest,
            th,
            info.suspended,
            shadow_banned=info.shadow_banned,
        )
        request[REQUESTER_KEY] = requester
        return requester

    async def _appservice_requester(self, request: web.Request, service: AppService, th: str) -> Requester:
        """An application service's request: it acts as its bot, or as `?user_id=` in its
        namespaces (registered first), with `?device_id=` if given (one of that user's)."""
        user_id = request.query.get("user_id") or service.sender
        device_id = request.query.get("device_id") or ""
        key = f"{th}\0{user_id}\0{device_id}"
        info = self._cache.get(key)
        if info is None:
            generation = self._cache.generation
            local = ":" + service.sender.partition(":")[2]
            if not service.owns_user(user_id) or not user_id.endswith(local):
                raise MatrixError(403, Codes.EXCLUSIVE, "The application service cannot act as this user")
            # (The service's bot is created at start-up: AppServiceSender._ensure_bots.)
            user = await self.store.get_user(user_id)
            if user is None or user["deactivated"]:
                raise MatrixError(
                    403, Codes.FORBIDDEN, "The application service has not registered this user"
                )
            if device_id and await self.store.get_device(user_id, device_id) is None:
                raise MatrixError(400, "M_UNKNOWN_DEVICE", "No such device for this user")
            info = TokenInfo(
                user_id,
                device_id,
                bool(user["is_admin"]),
                False,
                False,
                bool(user.get("locked")),
                bool(user.get("suspended")),
                shadow_banned=bool(user.get("shadow_banned")),
            )
            if not device_id:
                # A device can be deleted without this cache hearing of it (its tokens are
                # dropped by hash): only device-less identities are kept.
                self._cache.put(key, info, generation)
        if info.locked:
            raise MatrixError(401, Codes.USER_LOCKED, "This account has been locked", soft_logout=True)
        act_as(APPSERVICE)
        return Requester(
            info.user_id,
            info.device_id,
            info.is_admin,
            False,
            th,
            info.suspended,
            appservice=service.id,
            shadow_banned=info.shadow_banned,
        )
