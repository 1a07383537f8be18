"""Single sign-on: identity provider users (provider, subject) and their local accounts."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from homeserver.storage.cs_schema import user_external_ids
from homeserver.storage.engine import Database


class ExternalIdStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def user_for(self, provider: str, external_id: str) -> str | None:
        t = user_external_ids.c
        q = select(t.user_id).where(t.auth_provider == provider, t.external_id == external_id)
        async with self.db.read() as conn:
            found = (await conn.execute(q)).scalar_one_or_none()
        return str(found) if found is not None else None

    async def link(self, provider: str, external_id: str, user_id: str) -> str:
        """Record the link; returns the user it links to (another's, if one raced us)."""
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    user_external_ids.insert().values(
                        auth_provider=provider, external_id=external_id, user_id=user_id
                    )
                )
        except IntegrityError:
            found = await self.user_for(provider, external_id)
            if found is None:
                raise
            return found
        return user_id

    async def of_user(self, user_id: str) -> list[tuple[str, str]]:
        """(provider, external ID) of every link of a user."""
        t = user_external_ids.c
        q = select(t.auth_provider, t.external_id).where(t.user_id == user_id).order_by(t.auth_provider)
        async with self.db.read() as conn:
            return [(str(p), str(e)) for p, e in await conn.execute(q)]

    async def replace_for_user(self, user_id: str, links: list[tuple[str, str]]) -> bool:
        """Make `links` the user's only ones; False (and nothing changed) if one of them
        belongs to another user."""
        t = user_external_ids.c
        async with self.db.write() as conn:
            for provider, external_id in links:
                q = select(t.user_id).where(t.auth_provider == provider, t.external_id == external_id)
                owner = (await conn.execute(q)).scalar_one_or_none()
                if owner is not None and owner != user_id:
                    return False
            await conn.execute(delete(user_external_ids).where(t.user_id == user_id))
            for provider, external_id in dict.fromkeys(links):
                await conn.execute(
                    user_external_ids.insert().values(
                        auth_provider=provider, external_id=external_id, user_id=user_id
                    )
                )
        return True
