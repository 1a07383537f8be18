"""Which devices get the bot's room keys, and whose encrypted messages it acts on.

Modes:
- `tofu` (default): trust on first use. A user's cross-signing master key is pinned the first
  time the bot sees it; their devices are trusted when that identity signed them. A user without
  cross-signing has each device trusted the first time it is seen (nio then pins its keys).
  A changed master key is never trusted silently: the user's devices are blocked and a warning
  logged until an operator runs `sotto-bot trust reset USER` (spec: clients must flag changes).
- `allowlist`: as `tofu`, but only for users matching `trusted_users`; everyone else is blocked.
- `verified`: only devices verified interactively (`sotto-bot verify`, SAS) are trusted.

With `exclude_insecure_devices` (default on, as Element does per MSC4153) a device that is not
cross-signed by a user who has cross-signing is blocked. Blocked devices get no room keys and
their messages reach no handler. A device blocked by policy is re-examined whenever its keys
change, so a new session becomes usable as soon as its owner cross-signs it.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from clients.client import SottoAsyncClient
from clients.crosssigning import UserIdentity
from clients.store import TRUST_FILE, StoreDir

log = logging.getLogger(__name__)


class TrustMode(StrEnum):
    TOFU = "tofu"
    ALLOWLIST = "allowlist"
    VERIFIED = "verified"


class Decision(Enum):
    TRUST = "trust"
    BLOCK = "block"


def matches(user_id: str, patterns: Iterable[str]) -> bool:
    """Glob patterns over user IDs: `@alice:example.org`, `@*:example.org`, `*`."""
    return any(fnmatch.fnmatchcase(user_id, pattern) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    mode: TrustMode = TrustMode.TOFU
    trusted_users: tuple[str, ...] = ()
    exclude_insecure_devices: bool = True


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    reason: str
    pin: str | None = None  # master key to pin for the user, if newly seen


def decide(
    policy: TrustPolicy,
    user_id: str,
    device_id: str,
    identity: UserIdentity | None,
    pinned_master: str | None,
) -> Verdict:
    """The policy's decision for one device not yet verified interactively. Pure."""
    if policy.mode is TrustMode.VERIFIED:
        return Verdict(Decision.BLOCK, "only interactively verified devices are trusted")
    if policy.mode is TrustMode.ALLOWLIST and not matches(user_id, policy.trusted_users):
        return Verdict(Decision.BLOCK, "user is not on the trust allowlist")
    master = identity.master_public if identity else None
    if master is None:
        if pinned_master is not None:
            return Verdict(Decision.BLOCK, "user's cross-signing identity disappeared")
        return Verdict(Decision.TRUST, "first use of a device without cross-signing")
    new_pin = None
    if pinned_master is None:
        new_pin = master
    elif pinned_master != master:
        return Verdict(Decision.BLOCK, "user's cross-signing identity changed")
    assert identity is not None
    if identity.device_cross_signed(device_id):
        return Verdict(Decision.TRUST, "cross-signed by the pinned identity", new_pin)
    if policy.exclude_insecure_devices:
        return Verdict(Decision.BLOCK, "device is not cross-signed by its owner", new_pin)
    return Verdict(Decision.TRUST, "first use of a device that is not cross-signed", new_pin)


@dataclass
class TrustState:
    pins: dict[str, str] = field(default_factory=dict)
    blocked: set[tuple[str, str]] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {"pins": self.pins, "blocked_by_policy": sorted(f"{u}|{d}" for u, d in self.blocked)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> TrustState:
        if not data:
            return cls()
        blocked = {tuple(item.split("|", 1)) for item in data.get("blocked_by_policy", [])}
        return cls(dict(data.get("pins", {})), {(u, d) for u, d in blocked})


def forget_pin(store: StoreDir, user_id: str, state: TrustState | None = None) -> bool:
    """Drop a user's pinned identity (works offline, on the store alone)."""
    state = state or TrustState.from_json(store.read_json(TRUST_FILE))
    if state.pins.pop(user_id, None) is None:
        return False
    store.write_json(TRUST_FILE, state.to_json())
    return True


class TrustManager:
    """Applies a TrustPolicy to the devices nio knows about, persisting pins in the store."""

    def __init__(self, client: SottoAsyncClient, store: StoreDir, policy: TrustPolicy) -> None:
        self.client = client
        self.store = store
        self.policy = policy
        self.state = TrustState.from_json(store.read_json(TRUST_FILE))

    def _candidates(self) -> list[Any]:
        own = (self.client.user_id, self.client.device_id)
        out = []
        for device in self.client.device_store:
            key = (device.user_id, device.id)
            if device.deleted or key == own:
                continue
            if key in self.state.blocked and not device.blacklisted:
                # Verified interactively since policy blocked it: the operator's word wins.
                self.state.blocked.discard(key)
            elif device.trust_state.name == "unset" or key in self.state.blocked:
                out.append(device)
        return out

    async def review(self) -> None:
        """Decide about every device that has no decision yet (or was blocked by policy)."""
        if not self.client.olm:
            return
        candidates = self._candidates()
        if not candidates:
            return
        identities = await self._identities({d.user_id for d in candidates})
        changed = False
        for device in candidates:
            key = (device.user_id, device.id)
            if device.user_id not in identities:
                continue  # the query failed for this user (their server unreachable?): decide later
            if device.verified and not device.blacklisted:
                # Verified interactively while the query above was in flight: the operator's word wins.
                changed |= key in self.state.blocked
                self.state.blocked.discard(key)
                continue
            verdict = decide(
                self.policy,
                device.user_id,
                device.id,
                identities.get(device.user_id),
                self.state.pins.get(device.user_id),
            )
            if verdict.pin is not None:
                self.state.pins[device.user_id] = verdict.pin
                changed = True
            if verdict.decision is Decision.TRUST:
                if device.blacklisted:
                    self.client.unblacklist_device(device)
                self.client.verify_device(device)
                changed |= key in self.state.blocked
                self.state.blocked.discard(key)
                log.info("trusting device %s of %s: %s", device.id, device.user_id, verdict.reason)
            else:
                if not device.blacklisted:
                    self.client.blacklist_device(device)
                if key not in self.state.blocked:
                    self.state.blocked.add(key)
                    changed = True
                    level = logging.WARNING if "identity" in verdict.reason else logging.INFO
                    log.log(level, "blocking device %s of %s: %s", device.id, device.user_id, verdict.reason)
        if changed:
            self.save()

    async def _identities(self, users: set[str]) -> dict[str, UserIdentity]:
        resp = await self.client.request_json(
            "POST", "/v3/keys/query", {"device_keys": {u: [] for u in users}, "timeout": 10000}
        )
        if resp.status != 200:
            log.warning("keys/query for trust review failed: HTTP %s", resp.status)
            return {}
        body = resp.body
        answered = body.get("device_keys", {})
        return {
            user: UserIdentity(
                master_key=body.get("master_keys", {}).get(user),
                self_signing_key=body.get("self_signing_keys", {}).get(user),
                user_signing_key=None,
                devices=answered.get(user, {}) or {},
            )
            for user in users
            if user in answered
        }

    def accept_identity(self, user_id: str, master_key: str) -> None:
        """Pin an identity the operator verified interactively; it replaces any earlier pin
        (devices blocked for a changed identity are then re-examined against it)."""
        if self.state.pins.get(user_id) != master_key:
            self.state.pins[user_id] = master_key
            self.save()

    def forget(self, user_id: str) -> bool:
        """Accept a user's new identity: drop the pin; their blocked devices get re-examined."""
        return forget_pin(self.store, user_id, self.state)

    def save(self) -> None:
        self.store.write_json(TRUST_FILE, self.state.to_json())

    def sender_trusted(self, user_id: str, sender_key: str | None) -> bool:
        """May the bot act on an encrypted event from this user's device?"""
        if not self.client.olm:
            return True
        if (
            user_id == self.client.user_id
            and sender_key == self.client.olm.account.identity_keys["curve25519"]
        ):
            return True
        device = self.client.device_store.device_from_sender_key(user_id, sender_key) if sender_key else None
        if device is None:
            return False
        return bool(device.verified) and not device.blacklisted
