"""The bot's store directory: credentials, cross-signing secrets, trust pins, nio's crypto DB.

Layout of a store directory (created with mode 0700, files 0600):

    credentials.json     homeserver, user_id, device_id, access_token (written by login)
    oauth.json           OAuth 2.0 logins only: client_id, token endpoint, refresh token and
                         when the access token expires (renewed by clients.token_refresh)
    cross_signing.json   private cross-signing seeds (self-signing, user-signing, and the
                         master key only when the bot is configured to keep it)
    trust.json           trust-on-first-use pins: each peer's first-seen master key
    <user>_<device>.db   matrix-nio's SQLite crypto store (Olm account, Megolm sessions)

Invariants: secrets never leave this directory and are never logged; writes are atomic
(write to a temporary file, fsync, rename) so a crash never leaves a half-written file.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CREDENTIALS_FILE = "credentials.json"
LOCK_FILE = ".lock"
CROSS_SIGNING_FILE = "cross_signing.json"
TRUST_FILE = "trust.json"
OAUTH_FILE = "oauth.json"


class StoreLockedError(Exception):
    """Another process is using the store directory."""


@dataclass(frozen=True, slots=True)
class Credentials:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return (
            f"Credentials(homeserver={self.homeserver!r}, user_id={self.user_id!r}, "
            f"device_id={self.device_id!r})"
        )


class StoreDir:
    """A bot's persistent directory. All state that must survive a restart lives here."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Take the directory for this process: two processes on one Olm account corrupt it."""
        if self._lock_fd is not None:
            return
        self.ensure()
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(f"{self.path} is in use by another sotto-bot process") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    # -- generic JSON files -------------------------------------------------------------

    def read_json(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self.path / name, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        if not isinstance(data, dict):
            raise ValueError(f"{self.path / name} is not a JSON object")
        return data

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self.ensure()
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    # -- credentials ----------------------------------------------------------------------

    def load_credentials(self) -> Credentials | None:
        data = self.read_json(CREDENTIALS_FILE)
        if data is None:
            return None
        return Credentials(
            homeserver=str(data["homeserver"]),
            user_id=str(data["user_id"]),
            device_id=str(data["device_id"]),
            access_token=str(data["access_token"]),
        )

    def save_credentials(self, creds: Credentials) -> None:
        self.write_json(CREDENTIALS_FILE, asdict(creds))

    def forget_credentials(self) -> None:
        (self.path / CREDENTIALS_FILE).unlink(missing_ok=True)
