"""Device list `changed`/`left` computation against an in-memory membership model."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from homeserver.handlers.device_lists import DeviceListHandler
from homeserver.storage.device_lists import MembershipChange
from homeserver.sync.notifier import Notifier

ME = "@me:x"


class FakeStore:
    """Memberships as a log of (stream, room, user, membership); key changes as (stream, user)."""

    def __init__(self) -> None:
        self.log: list[tuple[int, str, str, str]] = []
        self.key_changes: dict[str, int] = {}
        self.stream = 0

    def member(self, room: str, user: str, membership: str) -> int:
        self.stream += 1
        self.log.append((self.stream, room, user, membership))
        return self.stream

    def keys_changed(self, user: str) -> int:
        self.stream += 1
        self.key_changes[user] = self.stream
        return self.stream

    def current(self) -> dict[tuple[str, str], tuple[str, int]]:
        state: dict[tuple[str, str], tuple[str, int]] = {}
        for stream, room, user, membership in self.log:
            state[(room, user)] = (membership, stream)
        return state

    def joined_rooms_now(self, user: str) -> list[str]:
        return [r for (r, u), (m, _) in self.current().items() if u == user and m == "join"]

    async def mark_changed(self, user_ids: Iterable[str]) -> int:
        for user in user_ids:
            self.keys_changed(user)
        return self.stream

    async def changed_between(self, since: int, upto: int) -> set[str]:
        return {u for u, s in self.key_changes.items() if since < s <= upto}

    async def membership_changes(
        self, room_ids: Collection[str], since: int, upto: int
    ) -> list[MembershipChange]:
        return [
            MembershipChange(r, u, m, s) for s, r, u, m in self.log if r in room_ids and since < s <= upto
        ]

    async def joined_members(self, room_ids: Collection[str]) -> set[str]:
        return {u for (r, u), (m, _) in self.current().items() if r in room_ids and m == "join"}

    async def users_sharing(self, room_ids: Collection[str], candidates: Collection[str]) -> set[str]:
        return {
            u
            for (r, u), (m, _) in self.current().items()
            if r in room_ids and m == "join" and u in candidates
        }

    async def own_membership_changes(self, user_id: str, since: int, upto: int) -> list[tuple[str, str]]:
        return [(r, m) for (r, u), (m, s) in self.current().items() if u == user_id and since < s <= upto]

    async def joined_rooms(self, user_id: str) -> list[str]:
        return self.joined_rooms_now(user_id)


async def changes(store: FakeStore, since: int) -> tuple[list[str], list[str]]:
    handler = DeviceListHandler(store, Notifier())
    return await handler.get_changes(ME, since, store.stream, store.joined_rooms_now(ME))


async def test_join_key_change_and_leave() -> None:
    store = FakeStore()
    store.member("!a", ME, "join")
    since = store.member("!a", "@bob:x", "join")
    assert await changes(store, 0) == (["@bob:x"], [])
    assert await changes(store, since) == ([], [])
    store.keys_changed("@bob:x")
    store.keys_changed("@stranger:x")
    assert await changes(store, since) == (["@bob:x"], [])
    since = store.stream
    store.member("!a", "@bob:x", "leave")
    assert await changes(store, since) == ([], ["@bob:x"])
    since = store.stream
    store.keys_changed("@bob:x")
    assert await changes(store, since) == ([], [])


async def test_leave_of_one_shared_room_is_not_left_while_another_is_shared() -> None:
    store = FakeStore()
    for room in ("!a", "!b"):
        store.member(room, ME, "join")
        store.member(room, "@bob:x", "join")
    since = store.stream
    store.member("!a", "@bob:x", "leave")
    assert await changes(store, since) == ([], [])


async def test_my_own_join_and_leave() -> None:
    store = FakeStore()
    store.member("!a", "@bob:x", "join")
    store.member("!a", "@carol:x", "join")
    store.member("!b", "@carol:x", "join")
    since = store.stream
    store.member("!a", ME, "join")
    assert await changes(store, since) == (["@bob:x", "@carol:x"], [])
    store.member("!b", ME, "join")
    since = store.stream
    store.member("!a", ME, "leave")
    # Carol is still shared through !b.
    assert await changes(store, since) == ([], ["@bob:x"])


async def test_own_key_changes_are_reported_to_me() -> None:
    store = FakeStore()
    store.member("!a", ME, "join")
    since = store.stream
    store.keys_changed(ME)
    assert await changes(store, since) == ([ME], [])
    assert await changes(store, store.stream) == ([], [])
