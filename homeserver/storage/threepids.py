"""Third-party identifiers on accounts (`user_threepids`) and the validation sessions that
prove them (`threepid_validation_sessions`), in the database so every worker sees them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.storage.cs_schema import threepid_validation_sessions as sessions
from homeserver.storage.cs_schema import user_threepids
from homeserver.storage.engine import Database


def email_key(address: str) -> str:
    """How an email address is stored and looked up: trimmed and lower-cased (as Synapse).
    New addresses are also checked (handlers.threepids.canonical_email)."""
    return address.strip().lower()


@dataclass(slots=True, frozen=True)
class Threepid:
    medium: str
    address: str
    validated_at: int
    added_at: int

    def to_json(self) -> dict[str, str | int]:
        return {
            "medium": self.medium,
            "address": self.address,
            "validated_at": self.validated_at,
            "added_at": self.added_at,
        }


@dataclass(slots=True, frozen=True)
class ValidationSession:
    session_id: str
    client_secret: str
    medium: str
    address: str
    token_hash: str
    send_attempt: int
    validated_ts: int | None
    expires_ts: int
    # Where the browser goes once the emailed link is opened (checked when it was given).
    next_link: str | None = None


class ThreepidUnavailable(Exception):
    """A validation session cannot give its address to a new account: it is no longer there,
    validated and unexpired (`in_use` False), or its address belongs to an account (True)."""

    def __init__(self, in_use: bool) -> None:
        super().__init__("address in use" if in_use else "no validated session")
        self.in_use = in_use


async def bind_validated(conn: AsyncConnection, user_id: str, session_id: str, now: int) -> None:
    """Inside a write transaction (an account's creation): use up the validated session and
    give its address to `user_id`. Raises ThreepidUnavailable, so that the transaction, and
    the account with it, is rolled back. The caller maps an IntegrityError (a concurrent
    binding of the address, on PostgreSQL) to `ThreepidUnavailable(True)`."""
    c, t = sessions.c, user_threepids.c
    proven = select(c.medium, c.address, c.validated_ts).where(
        c.session_id == session_id, c.validated_ts.is_not(None), c.expires_ts >= now
    )
    row = (await conn.execute(proven)).first()
    # The delete decides between two registrations racing for one session.
    if row is None or not (await conn.execute(delete(sessions).where(c.session_id == session_id))).rowcount:
        raise ThreepidUnavailable(in_use=False)
    medium, address, validated_ts = row
    owner = select(t.user_id).where(t.medium == medium, t.address == address)
    if (await conn.execute(owner)).first() is not None:
        raise ThreepidUnavailable(in_use=True)
    await conn.execute(
        user_threepids.insert().values(
            user_id=user_id, medium=medium, address=address, validated_at=int(validated_ts), added_at=now
        )
    )


def _session(row: object) -> ValidationSession:
    return ValidationSession(*row)  # type: ignore[misc]


_SESSION_COLUMNS = (
    sessions.c.session_id,
    sessions.c.client_secret,
    sessions.c.medium,
    sessions.c.address,
    sessions.c.token_hash,
    sessions.c.send_attempt,
    sessions.c.validated_ts,
    sessions.c.expires_ts,
    sessions.c.next_link,
)


class ThreepidStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # A user's identifiers ---------------------------------------------------------------

    async def of_user(self, user_id: str) -> list[Threepid]:
        t = user_threepids.c
        q = (
            select(t.medium, t.address, t.validated_at, t.added_at)
            .where(t.user_id == user_id)
            .order_by(t.medium, t.address)
        )
        async with self.db.read() as conn:
            return [Threepid(str(m), str(a), int(v), int(d)) for m, a, v, d in await conn.execute(q)]

    async def user_for(self, medium: str, address: str) -> str | None:
        t = user_threepids.c
        q = select(t.user_id).where(t.medium == medium, t.address == address)
        async with self.db.read() as conn:
            found = (await conn.execute(q)).scalar_one_or_none()
        return str(found) if found is not None else None

    async def add(self, user_id: str, medium: str, address: str, validated_at: int, added_at: int) -> bool:
        """Bind the address to the user; False if it belongs to another user. Adding one the
        user already has refreshes its validation time."""
        t = user_threepids.c
        try:
            async with self.db.write() as conn:
                q = select(t.user_id).where(t.medium == medium, t.address == address)
                owner = (await conn.execute(q)).scalar_one_or_none()
                if owner is not None and owner != user_id:
                    return False
                if owner is None:
                    await conn.execute(
                        user_threepids.insert().values(
                            user_id=user_id,
                            medium=medium,
                            address=address,
                            validated_at=validated_at,
                            added_at=added_at,
                        )
                    )
                else:
                    await conn.execute(
                        update(user_threepids)
                        .where(t.medium == medium, t.address == address)
                        .values(validated_at=validated_at)
                    )
        except IntegrityError:
            # Another request bound it meanwhile.
            return await self.user_for(medium, address) == user_id
        return True

    async def remove(self, user_id: str, medium: str, address: str) -> bool:
        """Unbind one of the user's addresses; False if the user did not have it."""
        t = user_threepids.c
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(user_threepids).where(t.user_id == user_id, t.medium == medium, t.address == address)
            )
        return bool(result.rowcount)

    async def replace_for_user(self, user_id: str, threepids: list[tuple[str, str]], now: int) -> bool:
        """Make `threepids` (medium, address) the user's only ones, validated now; False (and
        nothing changed) if one of them belongs to another user."""
        t = user_threepids.c
        async with self.db.write() as conn:
            for medium, address in threepids:
                q = select(t.user_id).where(t.medium == medium, t.address == address)
                owner = (await conn.execute(q)).scalar_one_or_none()
                if owner is not None and owner != user_id:
                    return False
            await conn.execute(delete(user_threepids).where(t.user_id == user_id))
            for medium, address in dict.fromkeys(threepids):
                await conn.execute(
                    user_threepids.insert().values(
                        user_id=user_id, medium=medium, address=address, validated_at=now, added_at=now
                    )
                )
        return True

    # Validation sessions ----------------------------------------------------------------

    async def session(self, session_id: str) -> ValidationSession | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(*_SESSION_COLUMNS).where(sessions.c.session_id == session_id))
            ).first()
        return _session(row) if row is not None else None

    async def session_for_secret(
        self, client_secret: str, medium: str, address: str
    ) -> ValidationSession | None:
        q = select(*_SESSION_COLUMNS).where(
            sessions.c.client_secret == client_secret,
            sessions.c.medium == medium,
            sessions.c.address == address,
        )
        async with self.db.read() as conn:
            row = (await conn.execute(q)).first()
        return _session(row) if row is not None else None

    async def start_session(
        self,
        session_id: str,
        client_secret: str,
        medium: str,
        address: str,
        token_hash: str,
        send_attempt: int,
        now: int,
        expires_ts: int,
        next_link: str | None = None,
    ) -> bool:
        """A new session (expired ones are dropped first); False if one for the same
        (client_secret, medium, address) appeared meanwhile."""
        try:
            async with self.db.write() as conn:
                await conn.execute(delete(sessions).where(sessions.c.expires_ts < now))
                await conn.execute(
                    sessions.insert().values(
                        session_id=session_id,
                        client_secret=client_secret,
                        medium=medium,
                        address=address,
                        token_hash=token_hash,
                        send_attempt=send_attempt,
                        created_ts=now,
                        validated_ts=None,
                        expires_ts=expires_ts,
                        next_link=next_link,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def new_token(
        self,
        session_id: str,
        previous_attempt: int,
        send_attempt: int,
        token_hash: str,
        expires_ts: int,
        next_link: str | None,
    ) -> bool:
        """A new token (and the next_link its request gave, as Synapse keeps one per token)
        for a resend of an unvalidated session, unless another request took this send
        attempt (False). Also puts a failed resend's previous token back."""
        c = sessions.c
        async with self.db.write() as conn:
            result = await conn.execute(
                update(sessions)
                .where(c.session_id == session_id, c.send_attempt == previous_attempt)
                .values(
                    send_attempt=send_attempt,
                    token_hash=token_hash,
                    expires_ts=expires_ts,
                    next_link=next_link,
                )
            )
        return bool(result.rowcount)

    async def mark_validated(self, session_id: str, now: int, expires_ts: int) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.session_id == session_id)
                .values(validated_ts=now, expires_ts=expires_ts)
            )

    async def delete_session(self, session_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(sessions).where(sessions.c.session_id == session_id))
