"""OpenID tokens, stored as their SHA-256 (homeserver.handlers.auth.hash_token)."""

from __future__ import annotations

from sqlalchemy import delete, insert, select

from homeserver.storage.cs_schema import openid_tokens
from homeserver.storage.engine import Database

_t = openid_tokens.c


class OpenIdStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, token_hash: str, user_id: str, expires_ms: int, now_ms: int) -> None:
        """Store a token, dropping the expired ones (they can never be used again)."""
        async with self.db.write() as conn:
            await conn.execute(delete(openid_tokens).where(_t.expires_ms <= now_ms))
            await conn.execute(
                insert(openid_tokens).values(token_hash=token_hash, user_id=user_id, expires_ms=expires_ms)
            )

    async def user_for(self, token_hash: str, now_ms: int) -> str | None:
        """The user a token was issued to, while it has not expired."""
        q = select(_t.user_id).where(_t.token_hash == token_hash, _t.expires_ms > now_ms)
        async with self.db.read() as conn:
            row = (await conn.execute(q)).first()
        return row[0] if row is not None else None
