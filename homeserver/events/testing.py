"""Build small, fully signed rooms in memory - for tests and debugging tools.

Role: a deterministic room simulator.  Each server's signing key is derived
from its name, so the same script always yields the same event IDs (which
matters: event IDs are the final tie-breaker of state resolution).

Invariants:
* Every event is produced by :func:`homeserver.events.builder.build_event`,
  i.e. real hashes, signatures and reference-hash event IDs.
* Auth events are chosen from the state *before* the event with
  :func:`auth_types_for_event`, exactly as a server would; by default the event
  is also checked with :func:`check_auth` so fixtures cannot silently be
  invalid.
* Not for production use: nothing here is secret (keys are derived from names).
"""

from __future__ import annotations

import hashlib
from typing import Any

from signedjson.key import decode_signing_key_base64, get_verify_key
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import encode_base64

from homeserver.events.auth import auth_types_for_event, check_auth
from homeserver.events.builder import build_event
from homeserver.events.identifiers import domain_of
from homeserver.events.model import Event
from homeserver.events.room_versions import RoomVersion

__all__ = ["RoomSim", "test_signing_key"]

StateMap = dict[tuple[str, str], Event]


def test_signing_key(server_name: str) -> SigningKey:
    """A deterministic (insecure) signing key for ``server_name``."""
    seed = hashlib.sha256(b"sotto-test-key:" + server_name.encode()).digest()
    return decode_signing_key_base64("ed25519", "test", encode_base64(seed))


# Stop pytest from collecting the helper above as a test.
test_signing_key.__test__ = False  # type: ignore[attr-defined]


class RoomSim:
    """A room being built event by event.

    ``state`` is the state after the latest event on the "main line"; forks
    are built by passing ``prev`` and ``state_before`` explicitly.
    """

    def __init__(
        self,
        room_version: RoomVersion,
        creator: str = "@alice:a.example",
        *,
        create_content: dict[str, Any] | None = None,
        start_ts: int = 1_000,
        room_localpart: str = "room",
    ) -> None:
        self.room_version = room_version
        self.events: dict[str, Event] = {}
        self.state_after: dict[str, StateMap] = {}
        self.state: StateMap = {}
        self.latest: list[str] = []
        self._ts = start_ts
        content = {"room_version": room_version.identifier, **(create_content or {})}
        room_id = (
            None if room_version.room_id_is_create_event_hash else f"!{room_localpart}:{domain_of(creator)}"
        )
        self.create = self._build(room_id, "m.room.create", creator, content, "", [], {}, check=True)
        self.room_id = self.create.room_id

    # -- helpers --------------------------------------------------------------
    @staticmethod
    def verify_key(server_name: str) -> VerifyKey:
        return get_verify_key(test_signing_key(server_name))

    def next_ts(self) -> int:
        self._ts += 1
        return self._ts

    def auth_events_for(self, event: Event, state: StateMap) -> dict[tuple[str, str], Event]:
        rv = self.room_version
        keys = auth_types_for_event(rv, event.type, event.sender, event.state_key, event.content)
        return {k: state[k] for k in keys if k in state}

    def _build(
        self,
        room_id: str | None,
        type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None,
        prev: list[str],
        state_before: StateMap,
        *,
        check: bool,
        ts: int | None = None,
        auth_override: list[str] | None = None,
        commit: bool = True,
    ) -> Event:
        keys = auth_types_for_event(self.room_version, type, sender, state_key, content)
        auth_ids = [state_before[k].event_id for k in keys if k in state_before]
        depth = max((self.events[p].depth for p in prev), default=0) + 1
        server = domain_of(sender)
        event = build_event(
            room_version=self.room_version,
            room_id=room_id,
            type=type,
            sender=sender,
            content=content,
            state_key=state_key,
            prev_event_ids=prev,
            auth_event_ids=auth_override if auth_override is not None else auth_ids,
            depth=depth,
            origin_server_ts=ts if ts is not None else self.next_ts(),
            server_name=server,
            signing_key=test_signing_key(server),
        )
        if check:
            create = state_before.get(("m.room.create", ""), event if type == "m.room.create" else None)
            check_auth(event, {k: state_before[k] for k in keys if k in state_before}, create)
        if not commit:
            return event
        self.events[event.event_id] = event
        after = dict(state_before)
        if event.is_state():
            after[event.state_key_tuple] = event
        self.state_after[event.event_id] = after
        if not prev or prev == self.latest:
            self.state = after
            self.latest = [event.event_id]
        return event

    # -- public API -------------------------------------------------------------
    def send(
        self,
        type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        prev: list[str] | None = None,
        state_before: StateMap | None = None,
        check: bool = True,
        ts: int | None = None,
        auth_override: list[str] | None = None,
        commit: bool = True,
    ) -> Event:
        """Create, sign and record an event.  Defaults: parent is the latest
        main-line event and the auth state is the main-line state.  For a
        single explicit parent the state after that parent is used.  With
        ``commit=False`` the event is returned but not recorded anywhere
        (for probing events that should be rejected)."""
        if prev is None:
            prev = list(self.latest)
        if state_before is None:
            if len(prev) == 1:
                state_before = self.state_after[prev[0]]
            elif prev == self.latest:
                state_before = self.state
            else:
                raise ValueError("state_before is required for a merge of several parents")
        return self._build(
            self.room_id, type, sender, content, state_key, prev, state_before,
            check=check, ts=ts, auth_override=auth_override, commit=commit,
        )  # fmt: skip

    def member(self, user: str, membership: str, sender: str | None = None, **kw: Any) -> Event:
        content: dict[str, Any] = {"membership": membership}
        content.update(kw.pop("content", {}))
        return self.send("m.room.member", sender or user, content, user, **kw)

    def state_ids(self, state: StateMap | None = None) -> dict[tuple[str, str], str]:
        """Event-ID form of a state map (the main-line state by default)."""
        return {k: e.event_id for k, e in (self.state if state is None else state).items()}

    def standard_setup(self, join_rule: str = "public", users: dict[str, int] | None = None) -> None:
        """Creator joins, sets power levels (creator 100 unless v12) and join rules."""
        creator = self.create.sender
        self.member(creator, "join")
        pl_users = dict(users or {})
        if not self.room_version.privileged_creators:
            pl_users.setdefault(creator, 100)
        self.send("m.room.power_levels", creator, {"users": pl_users}, "")
        self.send("m.room.join_rules", creator, {"join_rule": join_rule}, "")
