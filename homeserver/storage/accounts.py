"""Accounts: users, devices, access tokens and registration tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, not_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from homeserver.invalidation import Invalidations
from homeserver.storage.cs_schema import (
    delayed_events,
    oauth_sessions,
    profile_fields,
    spent_refresh_tokens,
    thread_subscriptions,
    user_threepids,
)
from homeserver.storage.engine import Database
from homeserver.storage.erased_users import ErasedUsers, mark_erased, mark_not_erased
from homeserver.storage.schema import access_tokens, devices, refresh_tokens, registration_tokens, users
from homeserver.storage.threepids import ThreepidUnavailable, bind_validated

# How long a spent refresh token is remembered (a replay after that is an unknown token).
SPENT_REFRESH_MEMORY_MS = 7 * 24 * 3600 * 1000


async def _erase_profile(conn: AsyncConnection, user_id: str) -> None:
    await conn.execute(
        update(users).where(users.c.user_id == user_id).values(displayname=None, avatar_url=None)
    )
    await conn.execute(delete(profile_fields).where(profile_fields.c.user_id == user_id))


@dataclass(slots=True, frozen=True)
class TokenInfo:
    user_id: str
    device_id: str
    is_admin: bool
    is_guest: bool
    deactivated: bool
    locked: bool = False
    suspended: bool = False
    # Refreshable tokens: when it expires (ms), and the refresh token its first use revokes.
    expires_ts: int | None = None
    revokes: str | None = None
    shadow_banned: bool = False


@dataclass(slots=True, frozen=True)
class RefreshInfo:
    user_id: str
    device_id: str
    # The refresh token this one was already traded for (its pair not used yet), if any.
    next_hash: str | None
    deactivated: bool
    locked: bool


@dataclass(slots=True)
class DeviceRow:
    user_id: str
    device_id: str
    display_name: str | None
    last_seen_ts: int | None
    last_seen_ip: str | None


@dataclass(slots=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    completed: int
    expiry_ts: int | None


class AccountStore:
    def __init__(self, db: Database, invalidations: Invalidations | None = None) -> None:
        self.db = db
        # Accounts deactivated with `erase`, kept in memory by every worker.
        self.erased = ErasedUsers(db, invalidations)

    async def create_user(
        self,
        user_id: str,
        password_hash: str | None,
        created_ts: int,
        *,
        is_admin: bool = False,
        is_guest: bool = False,
        displayname: str | None = None,
        email_session: str | None = None,
        consent_version: str | None = None,
    ) -> None:
        """`email_session`: a validated email session whose address the account gets, in the
        same transaction (ThreepidUnavailable, and no account, if that cannot be).
        `consent_version`: the terms the user accepted to register (now, with the account)."""
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    insert(users).values(
                        user_id=user_id,
                        password_hash=password_hash,
                        is_admin=is_admin,
                        is_guest=is_guest,
                        deactivated=False,
                        created_ts=created_ts,
                        displayname=displayname,
                        consent_version=consent_version,
                        consent_ts=created_ts if consent_version is not None else None,
                    )
                )
                if email_session is not None:
                    await bind_validated(conn, user_id, email_session, created_ts)
        except IntegrityError:
            if email_session is None or await self.user_exists(user_id):
                raise
            raise ThreepidUnavailable(in_use=True) from None

    async def user_exists(self, user_id: str) -> bool:
        async with self.db.read() as conn:
            row = (await conn.execute(select(users.c.user_id).where(users.c.user_id == user_id))).first()
        return row is not None

    async def get_user(self, user_id: str) -> dict[str, object] | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.user_id == user_id))).mappings().first()
        return dict(row) if row else None

    async def find_user_case_insensitive(self, user_id: str) -> str | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(users.c.user_id).where(func.lower(users.c.user_id) == user_id.lower())
                )
            ).first()
        return row[0] if row else None

    async def get_moderation(self, user_id: str) -> dict[str, bool] | None:
        """{"locked": ..., "suspended": ...} of an active account; None if unknown or deactivated."""
        q = select(users.c.locked, users.c.suspended).where(
            users.c.user_id == user_id, users.c.deactivated.is_(False)
        )
        async with self.db.read() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else {"locked": bool(row[0]), "suspended": bool(row[1])}

    async def set_moderation(self, user_id: str, flag: str, value: bool) -> bool:
        """Set `locked`, `suspended` or `shadow_banned` on an active account; False if unknown
        or deactivated."""
        column = {
            "locked": users.c.locked,
            "suspended": users.c.suspended,
            "shadow_banned": users.c.shadow_banned,
        }[flag]
        q = (
            update(users)
            .where(users.c.user_id == user_id, users.c.deactivated.is_(False))
            .values({column: value})
        )
        async with self.db.write() as conn:
            return bool((await conn.execute(q)).rowcount)

    async def set_password_hash(self, user_id: str, password_hash: str | None) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(users).where(users.c.user_id == user_id).values(password_hash=password_hash)
            )

    async def upgrade_guest(
        self,
        user_id: str,
        password_hash: str | None,
        email_session: str | None = None,
        now: int = 0,
        consent_version: str | None = None,
    ) -> bool:
        """Make a guest account a full one (keeping its ID); False if it is not a guest.
        `email_session` and `consent_version`: as for `create_user`, with it or nothing changes."""
        values: dict[str, Any] = {"is_guest": False, "password_hash": password_hash}
        if consent_version is not None:
            values.update(consent_version=consent_version, consent_ts=now)
        q = (
            update(users)
            .where(users.c.user_id == user_id, users.c.is_guest.is_(True), users.c.deactivated.is_(False))
            .values(values)
        )
        try:
            async with self.db.write() as conn:
                if not (await conn.execute(q)).rowcount:
                    return False
                if email_session is not None:
                    await bind_validated(conn, user_id, email_session, now)
                return True
        except IntegrityError:
            if email_session is None:
                raise
            raise ThreepidUnavailable(in_use=True) from None

    # Re-consent to changed terms (homeserver/handlers/consent.py) ----------------------------

    async def get_consent(self, user_id: str) -> tuple[str | None, str | None, bool] | None:
        """(consent_version, consent_server_notice_sent, is_guest) of an active account; None
        if unknown or deactivated."""
        q = select(users.c.consent_version, users.c.consent_server_notice_sent, users.c.is_guest).where(
            users.c.user_id == user_id, users.c.deactivated.is_(False)
        )
        async with self.db.read() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else (row[0], row[1], bool(row[2]))

    async def set_consent(self, user_id: str, version: str, now: int) -> bool:
        """Record that an active account accepted `version` of the terms now; False if unknown
        or deactivated."""
        q = (
            update(users)
            .where(users.c.user_id == user_id, users.c.deactivated.is_(False))
            .values(consent_version=version, consent_ts=now)
        )
        async with self.db.write() as conn:
            return bool((await conn.execute(q)).rowcount)

    async def claim_consent_notice(self, user_id: str, version: str) -> bool:
        """Mark the consent server notice for `version` as sent to the user, if it was not
        and they have not accepted that version (one statement: of racing workers, one
        wins); True if this call did, so the caller sends it."""
        q = (
            update(users)
            .where(
                users.c.user_id == user_id,
                users.c.deactivated.is_(False),
                or_(
                    users.c.consent_server_notice_sent.is_(None),
                    users.c.consent_server_notice_sent != version,
                ),
                or_(users.c.consent_version.is_(None), users.c.consent_version != version),
            )
            .values(consent_server_notice_sent=version)
        )
        async with self.db.write() as conn:
            return bool((await conn.execute(q)).rowcount)

    async def release_consent_notice(self, user_id: str, version: str) -> None:
        """Undo `claim_consent_notice` (the notice could not be sent): a later sync tries again."""
        q = (
            update(users)
            .where(users.c.user_id == user_id, users.c.consent_server_notice_sent == version)
            .values(consent_server_notice_sent=None)
        )
        async with self.db.write() as conn:
            await conn.execute(q)

    async def set_admin(self, user_id: str, is_admin: bool) -> None:
        async with self.db.write() as conn:
            await conn.execute(update(users).where(users.c.user_id == user_id).values(is_admin=is_admin))

    async def deactivate(self, user_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(users).where(users.c.user_id == user_id).values(deactivated=True, password_hash=None)
            )
            await conn.execute(delete(access_tokens).where(access_tokens.c.user_id == user_id))
            await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.user_id == user_id))
            # Their scheduled events go too: sent later, they would fail (the user has left) or,
            # for an account that is reactivated, speak for it long after it was closed.
            await conn.execute(delete(delayed_events).where(delayed_events.c.user_id == user_id))
            # Their email addresses are free again (as Synapse does), and reset no password.
            await conn.execute(delete(user_threepids).where(user_threepids.c.user_id == user_id))
            # And their thread subscriptions (MSC4306, as Synapse).
            await conn.execute(delete(thread_subscriptions).where(thread_subscriptions.c.user_id == user_id))

    async def reactivate(self, user_id: str, password_hash: str) -> None:
        """The account opens again, no longer erased (as Synapse): its events are shown whole."""
        async with self.db.write() as conn:
            await conn.execute(
                update(users)
                .where(users.c.user_id == user_id)
                .values(deactivated=False, password_hash=password_hash)
            )
            await mark_not_erased(conn, user_id)
        self.erased.changed(user_id)

    async def get_profile(self, user_id: str) -> tuple[str | None, str | None, bool] | None:
        """(displayname, avatar_url, deactivated), or None for an unknown user."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(users.c.displayname, users.c.avatar_url, users.c.deactivated).where(
                        users.c.user_id == user_id
                    )
                )
            ).first()
        return (row[0], row[1], bool(row[2])) if row else None

    async def set_profile(self, user_id: str, **fields: str | None) -> None:
        async with self.db.write() as conn:
            await conn.execute(update(users).where(users.c.user_id == user_id).values(**fields))

    async def erase_profile(self, user_id: str) -> None:
        """The display name, avatar and every other profile field go."""
        async with self.db.write() as conn:
            await _erase_profile(conn, user_id)

    async def erase(self, user_id: str) -> None:
        """Deactivation with `erase`: the profile goes, and the user is marked erased (their
        events then reach those who were not in the room at the time pruned)."""
        async with self.db.write() as conn:
            await _erase_profile(conn, user_id)
            await mark_erased(conn, user_id)
        self.erased.changed(user_id)

    # Devices and tokens -----------------------------------------------------------------

    async def upsert_device(self, user_id: str, device_id: str, display_name: str | None, ts: int) -> bool:
        """Create the device if new; returns True if it was created."""
        async with self.db.write() as conn:
            exists = (
                await conn.execute(
                    select(devices.c.device_id).where(
                        devices.c.user_id == user_id, devices.c.device_id == device_id
                    )
                )
            ).first()
            if exists:
                return False
            await conn.execute(
                insert(devices).values(
                    user_id=user_id, device_id=device_id, display_name=display_name, last_seen_ts=ts
                )
            )
            return True

    async def add_access_token(self, token_hash: str, user_id: str, device_id: str, ts: int) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                insert(access_tokens).values(
                    token_hash=token_hash, user_id=user_id, device_id=device_id, created_ts=ts
                )
            )

    async def get_token(self, token_hash: str) -> TokenInfo | None:
        q = (
            select(
                access_tokens.c.user_id,
                access_tokens.c.device_id,
                users.c.is_admin,
                users.c.is_guest,
                users.c.deactivated,
                users.c.locked,
                users.c.suspended,
                access_tokens.c.expires_ts,
                access_tokens.c.revokes,
                users.c.shadow_banned,
            )
            .join(users, users.c.user_id == access_tokens.c.user_id)
            .where(access_tokens.c.token_hash == token_hash)
        )
        async with self.db.read() as conn:
            row = (await conn.execute(q)).first()
        if row is None:
            return None
        admin, guest, deactivated, locked, suspended = (bool(flag) for flag in row[2:7])
        return TokenInfo(
            row[0], row[1], admin, guest, deactivated, locked, suspended, row[7], row[8], bool(row[9])
        )

    # Refresh tokens -----------------------------------------------------------------------

    async def add_refreshable_token(
        self, token_hash: str, refresh_hash: str, user_id: str, device_id: str, ts: int, expires_ts: int
    ) -> None:
        """An access token that expires, with the refresh token that renews it."""
        async with self.db.write() as conn:
            await _insert_pair(conn, token_hash, refresh_hash, user_id, device_id, ts, expires_ts, None)

    async def get_refresh_token(self, refresh_hash: str) -> RefreshInfo | None:
        q = (
            select(
                refresh_tokens.c.user_id,
                refresh_tokens.c.device_id,
                refresh_tokens.c.next_hash,
                users.c.deactivated,
                users.c.locked,
            )
            .join(users, users.c.user_id == refresh_tokens.c.user_id)
            .where(refresh_tokens.c.token_hash == refresh_hash)
        )
        async with self.db.read() as conn:
            row = (await conn.execute(q)).first()
        return None if row is None else RefreshInfo(row[0], row[1], row[2], bool(row[3]), bool(row[4]))

    async def trade_refresh_token(
        self,
        old_hash: str,
        superseded: str | None,
        token_hash: str,
        refresh_hash: str,
        ts: int,
        expires_ts: int,
    ) -> list[str] | None:
        """Issue a new pair for the refresh token `old_hash`, which stays valid until the pair
        is first used (`revoke_refresh_token`). `superseded`: the pair it was traded for
        before and never used, dropped now. Returns the access tokens dropped, or None if
        `old_hash` was meanwhile traded by someone else (or revoked)."""
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(refresh_tokens.c.user_id, refresh_tokens.c.device_id).where(
                        refresh_tokens.c.token_hash == old_hash,
                        refresh_tokens.c.next_hash.is_(None)
                        if superseded is None
                        else refresh_tokens.c.next_hash == superseded,
                    )
                )
            ).first()
            if row is None:
                return None
            dropped: list[str] = []
            if superseded is not None:
                dropped += await _drop_refresh(conn, superseded)
            # Using a traded-for refresh token revokes the one it was traded for.
            q = select(refresh_tokens.c.token_hash).where(refresh_tokens.c.next_hash == old_hash)
            for (previous,) in (await conn.execute(q)).all():
                dropped += await _drop_refresh(conn, previous)
                await conn.execute(
                    update(access_tokens).where(access_tokens.c.revokes == previous).values(revokes=None)
                )
            user_id, device_id = row
            await _insert_pair(conn, token_hash, refresh_hash, user_id, device_id, ts, expires_ts, old_hash)
            await conn.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.token_hash == old_hash)
                .values(next_hash=refresh_hash)
            )
            return dropped

    async def revoke_refresh_token(self, old_hash: str, now: int) -> list[str]:
        """The pair traded for `old_hash` is in use: drop `old_hash` and the access tokens
        issued with it, and clear the pointers to it. Returns the access tokens dropped.
        `old_hash` is remembered as spent for SPENT_REFRESH_MEMORY_MS (see `spent_refresh`)."""
        async with self.db.write() as conn:
            owner = (
                await conn.execute(
                    select(refresh_tokens.c.user_id, refresh_tokens.c.device_id).where(
                        refresh_tokens.c.token_hash == old_hash
                    )
                )
            ).first()
            if owner is not None:
                await conn.execute(
                    delete(spent_refresh_tokens).where(
                        spent_refresh_tokens.c.spent_ts < now - SPENT_REFRESH_MEMORY_MS
                    )
                )
                await conn.execute(
                    insert(spent_refresh_tokens).values(
                        token_hash=old_hash, user_id=owner[0], device_id=owner[1], spent_ts=now
                    )
                )
            dropped = await _drop_refresh(conn, old_hash)
            await conn.execute(
                update(access_tokens).where(access_tokens.c.revokes == old_hash).values(revokes=None)
            )
            return dropped

    async def spent_refresh(self, refresh_hash: str) -> tuple[str, str] | None:
        """(user, device) of a refresh token whose successor was already in use, if remembered."""
        t = spent_refresh_tokens.c
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(t.user_id, t.device_id).where(t.token_hash == refresh_hash))
            ).first()
        return None if row is None else (str(row[0]), str(row[1]))

    async def delete_device_tokens(self, user_id: str, device_id: str) -> list[str]:
        """Delete a device's access and refresh tokens; returns the access tokens' hashes."""
        async with self.db.write() as conn:
            where = (access_tokens.c.user_id == user_id, access_tokens.c.device_id == device_id)
            dropped = [r[0] for r in await conn.execute(select(access_tokens.c.token_hash).where(*where))]
            await conn.execute(delete(access_tokens).where(*where))
            await conn.execute(
                delete(refresh_tokens).where(
                    refresh_tokens.c.user_id == user_id, refresh_tokens.c.device_id == device_id
                )
            )
            return dropped

    async def tokens_for_devices(self, user_id: str, device_ids: list[str] | None) -> list[str]:
        q = select(access_tokens.c.token_hash).where(access_tokens.c.user_id == user_id)
        if device_ids is not None:
            q = q.where(access_tokens.c.device_id.in_(device_ids))
        async with self.db.read() as conn:
            return [r[0] for r in await conn.execute(q)]

    async def delete_devices(self, user_id: str, device_ids: list[str] | None) -> None:
        """Delete devices (all of the user's when device_ids is None) and their tokens."""
        async with self.db.write() as conn:
            dq = delete(devices).where(devices.c.user_id == user_id)
            tq = delete(access_tokens).where(access_tokens.c.user_id == user_id)
            rq = delete(refresh_tokens).where(refresh_tokens.c.user_id == user_id)
            # A device's OAuth session and spent refresh tokens end with it (a later sign-in
            # may reuse its ID, and an old token must not end that new session).
            oq = delete(oauth_sessions).where(oauth_sessions.c.user_id == user_id)
            sq = delete(spent_refresh_tokens).where(spent_refresh_tokens.c.user_id == user_id)
            if device_ids is not None:
                dq = dq.where(devices.c.device_id.in_(device_ids))
                tq = tq.where(access_tokens.c.device_id.in_(device_ids))
                rq = rq.where(refresh_tokens.c.device_id.in_(device_ids))
                oq = oq.where(oauth_sessions.c.device_id.in_(device_ids))
                sq = sq.where(spent_refresh_tokens.c.device_id.in_(device_ids))
            for q in (tq, rq, oq, sq, dq):
                await conn.execute(q)

    async def list_devices(self, user_id: str) -> list[DeviceRow]:
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(
                    devices.c.user_id,
                    devices.c.device_id,
                    devices.c.display_name,
                    devices.c.last_seen_ts,
                    devices.c.last_seen_ip,
                ).where(devices.c.user_id == user_id)
            )
            return [DeviceRow(*r) for r in rows]

    async def get_device(self, user_id: str, device_id: str) -> DeviceRow | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        devices.c.user_id,
                        devices.c.device_id,
                        devices.c.display_name,
                        devices.c.last_seen_ts,
                        devices.c.last_seen_ip,
                    ).where(devices.c.user_id == user_id, devices.c.device_id == device_id)
                )
            ).first()
        return DeviceRow(*row) if row else None

    async def update_device(self, user_id: str, device_id: str, display_name: str | None) -> bool:
        async with self.db.write() as conn:
            res = await conn.execute(
                update(devices)
                .where(devices.c.user_id == user_id, devices.c.device_id == device_id)
                .values(display_name=display_name)
            )
            return bool(res.rowcount)

    async def touch_device(self, user_id: str, device_id: str, ts: int, ip: str | None) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(devices)
                .where(devices.c.user_id == user_id, devices.c.device_id == device_id)
                .values(last_seen_ts=ts, last_seen_ip=ip)
            )

    # Registration tokens ----------------------------------------------------------------

    async def create_registration_token(
        self, token: str, uses_allowed: int | None, expiry_ts: int | None
    ) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                insert(registration_tokens).values(
                    token=token, uses_allowed=uses_allowed, completed=0, expiry_ts=expiry_ts
                )
            )

    async def list_registration_tokens(self, valid: bool | None, now_ms: int) -> list[RegistrationToken]:
        """Every token, or only those still usable (valid) or used up or expired (not)."""
        t = registration_tokens.c
        usable = and_(
            or_(t.uses_allowed.is_(None), t.completed < t.uses_allowed),
            or_(t.expiry_ts.is_(None), t.expiry_ts >= now_ms),
        )
        q = select(registration_tokens).order_by(t.token)
        if valid is not None:
            q = q.where(usable if valid else not_(usable))
        async with self.db.read() as conn:
            return [RegistrationToken(**row) for row in (await conn.execute(q)).mappings()]

    async def get_registration_token(self, token: str) -> RegistrationToken | None:
        q = select(registration_tokens).where(registration_tokens.c.token == token)
        async with self.db.read() as conn:
            row = (await conn.execute(q)).mappings().first()
        return RegistrationToken(**row) if row else None

    async def update_registration_token(self, token: str, **fields: int | None) -> bool:
        """Set `uses_allowed` and/or `expiry_ts`; False for an unknown token."""
        async with self.db.write() as conn:
            res = await conn.execute(
                update(registration_tokens).where(registration_tokens.c.token == token).values(**fields)
            )
        return bool(res.rowcount)

    async def delete_registration_token(self, token: str) -> bool:
        async with self.db.write() as conn:
            res = await conn.execute(delete(registration_tokens).where(registration_tokens.c.token == token))
        return bool(res.rowcount)

    async def registration_token_valid(self, token: str, now_ms: int) -> bool:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        registration_tokens.c.uses_allowed,
                        registration_tokens.c.completed,
                        registration_tokens.c.expiry_ts,
                    ).where(registration_tokens.c.token == token)
                )
            ).first()
        if row is None:
            return False
        uses_allowed, completed, expiry = row
        if expiry is not None and expiry < now_ms:
            return False
        return uses_allowed is None or completed < uses_allowed

    async def consume_registration_token(self, token: str, now_ms: int) -> bool:
        """Count one use of a token if it is still valid; False if it was not.

        Check and increment are one statement, so two registrations racing for
        a token's last use cannot both succeed.
        """
        t = registration_tokens.c
        async with self.db.write() as conn:
            res = await conn.execute(
                update(registration_tokens)
                .where(
                    t.token == token,
                    (t.uses_allowed.is_(None)) | (t.completed < t.uses_allowed),
                    (t.expiry_ts.is_(None)) | (t.expiry_ts >= now_ms),
                )
                .values(completed=t.completed + 1)
            )
            return bool(res.rowcount)

    async def refund_registration_token(self, token: str) -> None:
        """Give back a use taken by `consume_registration_token` when registration then failed."""
        t = registration_tokens.c
        async with self.db.write() as conn:
            await conn.execute(
                update(registration_tokens)
                .where(t.token == token, t.completed > 0)
                .values(completed=t.completed - 1)
            )

    async def use_registration_token(self, token: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(registration_tokens)
                .where(registration_tokens.c.token == token)
                .values(completed=registration_tokens.c.completed + 1)
            )


async def _drop_refresh(conn: AsyncConnection, refresh_hash: str) -> list[str]:
    """Delete a refresh token and the access tokens issued with it; returns their hashes."""
    q = select(access_tokens.c.token_hash).where(access_tokens.c.refresh_hash == refresh_hash)
    dropped = [r[0] for r in await conn.execute(q)]
    await conn.execute(delete(access_tokens).where(access_tokens.c.refresh_hash == refresh_hash))
    await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.token_hash == refresh_hash))
    return dropped


async def _insert_pair(
    conn: AsyncConnection,
    token_hash: str,
    refresh_hash: str,
    user_id: str,
    device_id: str,
    ts: int,
    expires_ts: int,
    revokes: str | None,
) -> None:
    """An expiring access token and its refresh token; `revokes`: the refresh token the
    access token's first use revokes (when traded for one)."""
    await conn.execute(
        insert(refresh_tokens).values(
            token_hash=refresh_hash, user_id=user_id, device_id=device_id, created_ts=ts
        )
    )
    await conn.execute(
        insert(access_tokens).values(
            token_hash=token_hash,
            user_id=user_id,
            device_id=device_id,
            created_ts=ts,
            expires_ts=expires_ts,
            refresh_hash=refresh_hash,
            revokes=revokes,
        )
    )
