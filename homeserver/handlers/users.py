"""Creating accounts: shared by /register, the admin API and `sotto register-user`."""

from __future__ import annotations

import re

from homeserver.errors import Codes, MatrixError
from homeserver.handlers.auth import PasswordHasher
from homeserver.storage.accounts import AccountStore

# The spec's user ID localpart grammar (historical characters are not allowed for new users).
_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")


def validate_localpart(localpart: str, server_name: str) -> str:
    if not localpart or not _LOCALPART.match(localpart):
        raise MatrixError(400, Codes.INVALID_USERNAME, "User ID may only contain a-z, 0-9, . _ = - / +")
    user_id = f"@{localpart}:{server_name}"
    if len(user_id.encode()) > 255:
        raise MatrixError(400, Codes.INVALID_USERNAME, "User ID is too long")
    return user_id


async def create_account(
    store: AccountStore,
    passwords: PasswordHasher,
    server_name: str,
    localpart: str,
    password: str | None,
    now_ms: int,
    *,
    admin: bool = False,
    guest: bool = False,
    password_hash: str | None = None,
    displayname: str | None = None,
    email_session: str | None = None,
    consent_version: str | None = None,
) -> str:
    """Create a user; raises M_USER_IN_USE if taken. Returns the full user ID.

    `password_hash`: the password, already hashed (then `password` is None).
    `email_session`: a validated email session whose address the account gets with it
    (storage.threepids.ThreepidUnavailable, and no account, if it cannot).
    `consent_version`: the server's terms the user accepted to register."""
    user_id = validate_localpart(localpart.lower() if not guest else localpart, server_name)
    if await store.find_user_case_insensitive(user_id):
        raise MatrixError(400, Codes.USER_IN_USE, "User ID already taken")
    if password:
        password_hash = await passwords.hash(password)
    await store.create_user(
        user_id,
        password_hash,
        now_ms,
        is_admin=admin,
        is_guest=guest,
        displayname=displayname or localpart,
        email_session=email_session,
        consent_version=consent_version,
    )
    return user_id
