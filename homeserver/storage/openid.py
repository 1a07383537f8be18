"""Short-lived tokens that name a user, stored as their SHA-256
(homeserver.handlers.auth.hash_token): OpenID tokens, checked by third parties, and login
tokens (`m.login.token`), used once."""

from __future__ import annotations

from sqlalchemy import Select, Table, delete, insert, select

from homeserver.storage.cs_schema import login_tokens, openid_tokens
from homeserver.storage.engine import Database


class ExpiringTokens:
    """A table of (token_hash, user_id, expires_ms)."""

    def __init__(self, db: Database, table: Table) -> None:
        self.db = db
        self.table = table
        self.c = table.c

    async def add(self, token_hash: str, user_id: str, expires_ms: int, now_ms: int) -> None:
        """Store a token, dropping the expired ones (they can never be used again)."""
        async with self.db.write() as conn:
            await conn.execute(delete(self.table).where(self.c.expires_ms <= now_ms))
            await conn.execute(
                insert(self.table).values(token_hash=token_hash, user_id=user_id, expires_ms=expires_ms)
            )

    def _owner(self, token_hash: str, now_ms: int) -> Select[tuple[str]]:
        return select(self.c.user_id).where(self.c.token_hash == token_hash, self.c.expires_ms > now_ms)

    async def user_for(self, token_hash: str, now_ms: int) -> str | None:
        """The user a token was issued to, while it has not expired."""
        async with self.db.read() as conn:
            row = (await conn.execute(self._owner(token_hash, now_ms))).first()
        return str(row[0]) if row is not None else None

    async def consume(self, token_hash: str, now_ms: int) -> str | None:
        """`user_for`, once: the token is gone afterwards (also when two requests race for
        it: only one DELETE removes the row)."""
        async with self.db.write() as conn:
            row = (await conn.execute(self._owner(token_hash, now_ms))).first()
            if row is None:
                return None
            deleted = await conn.execute(delete(self.table).where(self.c.token_hash == token_hash))
            return str(row[0]) if deleted.rowcount == 1 else None


def openid_store(db: Database) -> ExpiringTokens:
    return ExpiringTokens(db, openid_tokens)


def login_token_store(db: Database) -> ExpiringTokens:
    return ExpiringTokens(db, login_tokens)
