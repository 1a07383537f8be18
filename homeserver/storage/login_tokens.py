"""Login tokens (`m.login.token`), stored as their SHA-256 (homeserver.handlers.auth.hash_token)."""

from __future__ import annotations

from sqlalchemy import delete, insert, select

from homeserver.storage.cs_schema import login_tokens
from homeserver.storage.engine import Database

_t = login_tokens.c


class LoginTokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, token_hash: str, user_id: str, expires_ms: int, now_ms: int) -> None:
        """Store a token, dropping the expired ones (they can never be used again)."""
        async with self.db.write() as conn:
            await conn.execute(delete(login_tokens).where(_t.expires_ms <= now_ms))
            await conn.execute(
                insert(login_tokens).values(token_hash=token_hash, user_id=user_id, expires_ms=expires_ms)
            )

    async def consume(self, token_hash: str, now_ms: int) -> str | None:
        """The user a live token was issued to; the token is gone afterwards (single use,
        also when two logins race for it: only one DELETE removes the row)."""
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(_t.user_id).where(_t.token_hash == token_hash, _t.expires_ms > now_ms)
                )
            ).first()
            if row is None:
                return None
            deleted = await conn.execute(delete(login_tokens).where(_t.token_hash == token_hash))
            return str(row[0]) if deleted.rowcount == 1 else None
