"""Rows of the OAuth 2.0 API (homeserver/handlers/oauth.py): clients, authorisation codes,
device grants, OAuth sessions and approved cross-signing resets.

Codes and device codes are stored as digests only, and taken with one DELETE, so that two
requests racing with the same code (on two workers, say) never both get tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update

from homeserver import jsonutil
from homeserver.storage.cs_schema import (
    cross_signing_reset_grants,
    oauth_clients,
    oauth_codes,
    oauth_device_grants,
    oauth_sessions,
)
from homeserver.storage.engine import Database


@dataclass(frozen=True, slots=True)
class CodeGrant:
    """What the user approved at the authorisation endpoint, for one code exchange."""

    client_id: str
    user_id: str
    device_id: str
    redirect_uri: str
    scope: str
    code_challenge: str
    expires_ts: int


@dataclass(frozen=True, slots=True)
class DeviceGrant:
    device_code_hash: str
    user_code: str
    client_id: str
    device_id: str
    scope: str
    expires_ts: int
    user_id: str | None
    denied: bool


@dataclass(frozen=True, slots=True)
class OAuthSession:
    client_id: str
    scope: str


class OAuthStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Clients ----------------------------------------------------------------------------

    async def add_client(self, client_id: str, metadata: dict[str, Any], now: int) -> None:
        """Register; an identical registration (same ID, from the same metadata) is a no-op."""
        async with self.db.write() as conn:
            found = await conn.execute(
                select(oauth_clients.c.client_id).where(oauth_clients.c.client_id == client_id)
            )
            if found.first() is None:
                await conn.execute(
                    insert(oauth_clients).values(
                        client_id=client_id, metadata_json=jsonutil.dumps(metadata), created_ts=now
                    )
                )

    async def get_client(self, client_id: str) -> dict[str, Any] | None:
        q = select(oauth_clients.c.metadata_json).where(oauth_clients.c.client_id == client_id)
        async with self.db.read() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else dict(jsonutil.loads(row[0]))

    # Authorisation codes ----------------------------------------------------------------

    async def add_code(self, code_hash: str, grant: CodeGrant) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                insert(oauth_codes).values(
                    code_hash=code_hash,
                    client_id=grant.client_id,
                    user_id=grant.user_id,
                    device_id=grant.device_id,
                    redirect_uri=grant.redirect_uri,
                    scope=grant.scope,
                    code_challenge=grant.code_challenge,
                    expires_ts=grant.expires_ts,
                )
            )

    async def take_code(self, code_hash: str, now: int) -> CodeGrant | None:
        """The grant of a code, removed so it cannot be used again (None: unknown, used,
        or expired; expired codes are swept at the same time)."""
        t = oauth_codes.c
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(
                        t.client_id,
                        t.user_id,
                        t.device_id,
                        t.redirect_uri,
                        t.scope,
                        t.code_challenge,
                        t.expires_ts,
                    ).where(t.code_hash == code_hash)
                )
            ).first()
            taken = (await conn.execute(delete(oauth_codes).where(t.code_hash == code_hash))).rowcount
            await conn.execute(delete(oauth_codes).where(t.expires_ts <= now))
        if row is None or not taken or int(row[6]) <= now:
            return None
        client_id, user_id, device_id, redirect_uri, scope, challenge = (str(v) for v in row[:6])
        return CodeGrant(client_id, user_id, device_id, redirect_uri, scope, challenge, int(row[6]))

    # Device grants ----------------------------------------------------------------------

    async def add_device_grant(self, grant: DeviceGrant, now: int) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(oauth_device_grants).where(oauth_device_grants.c.expires_ts <= now))
            await conn.execute(
                insert(oauth_device_grants).values(
                    device_code_hash=grant.device_code_hash,
                    user_code=grant.user_code,
                    client_id=grant.client_id,
                    device_id=grant.device_id,
                    scope=grant.scope,
                    expires_ts=grant.expires_ts,
                    user_id=None,
                    denied=False,
                )
            )

    async def device_grant(
        self, *, device_code_hash: str | None = None, user_code: str | None = None
    ) -> DeviceGrant | None:
        t = oauth_device_grants.c
        where = (
            t.device_code_hash == device_code_hash
            if device_code_hash is not None
            else t.user_code == user_code
        )
        async with self.db.read() as conn:
            row = (await conn.execute(select(oauth_device_grants).where(where))).mappings().first()
        if row is None:
            return None
        return DeviceGrant(
            row["device_code_hash"],
            row["user_code"],
            row["client_id"],
            row["device_id"],
            row["scope"],
            int(row["expires_ts"]),
            row["user_id"],
            bool(row["denied"]),
        )

    async def decide_device_grant(self, user_code: str, user_id: str | None, now: int) -> bool:
        """Approve (for `user_id`) or, with None, deny a pending grant; False if it is gone,
        expired or already decided."""
        t = oauth_device_grants.c
        values = {"user_id": user_id} if user_id is not None else {"denied": True}
        q = (
            update(oauth_device_grants)
            .where(t.user_code == user_code, t.expires_ts > now, t.user_id.is_(None), t.denied.is_(False))
            .values(**values)
        )
        async with self.db.write() as conn:
            return bool((await conn.execute(q)).rowcount)

    async def note_poll(self, device_code_hash: str, now: int, leeway_ms: int) -> int | None:
        """Record a client's poll of a pending grant. A poll sooner than the grant's interval
        (less `leeway_ms`) after the last one lengthens the interval by five seconds, as
        RFC 8628 says, and returns the new interval; otherwise None."""
        t = oauth_device_grants.c
        # The column on the left types the bound value: BIGINT, as a timestamp needs.
        too_soon = t.last_poll_ts + t.interval_s * 1000 > now + leeway_ms
        mine = t.device_code_hash == device_code_hash
        async with self.db.write() as conn:
            slowed = await conn.execute(
                update(oauth_device_grants)
                .where(mine, too_soon)
                .values(interval_s=t.interval_s + 5, last_poll_ts=now)
            )
            if not slowed.rowcount:
                await conn.execute(update(oauth_device_grants).where(mine).values(last_poll_ts=now))
                return None
            row = (await conn.execute(select(t.interval_s).where(mine))).first()
        return None if row is None else int(row[0])

    async def take_device_grant(self, device_code_hash: str) -> bool:
        """Remove a decided grant; True for the one request that removed it."""
        t = oauth_device_grants.c
        async with self.db.write() as conn:
            return bool(
                (
                    await conn.execute(
                        delete(oauth_device_grants).where(t.device_code_hash == device_code_hash)
                    )
                ).rowcount
            )

    # Sessions ---------------------------------------------------------------------------

    async def add_session(self, user_id: str, device_id: str, client_id: str, scope: str, now: int) -> None:
        t = oauth_sessions.c
        async with self.db.write() as conn:
            await conn.execute(delete(oauth_sessions).where(t.user_id == user_id, t.device_id == device_id))
            await conn.execute(
                insert(oauth_sessions).values(
                    user_id=user_id, device_id=device_id, client_id=client_id, scope=scope, created_ts=now
                )
            )

    async def session(self, user_id: str, device_id: str) -> OAuthSession | None:
        t = oauth_sessions.c
        q = select(t.client_id, t.scope).where(t.user_id == user_id, t.device_id == device_id)
        async with self.db.read() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else OAuthSession(str(row[0]), str(row[1]))

    # Cross-signing resets ---------------------------------------------------------------

    async def allow_cross_signing_reset(self, user_id: str, until_ts: int) -> None:
        t = cross_signing_reset_grants.c
        async with self.db.write() as conn:
            await conn.execute(delete(cross_signing_reset_grants).where(t.user_id == user_id))
            await conn.execute(insert(cross_signing_reset_grants).values(user_id=user_id, until_ts=until_ts))

    async def take_cross_signing_reset(self, user_id: str, now: int) -> bool:
        """Use up the user's approval, if one is still valid (one approval, one reset)."""
        t = cross_signing_reset_grants.c
        async with self.db.write() as conn:
            q = delete(cross_signing_reset_grants).where(t.user_id == user_id, t.until_ts > now)
            return bool((await conn.execute(q)).rowcount)
