"""The user directory: profiles of users seen joining rooms, searchable among the users
the searcher shares a room with or who are in public rooms (or, with
user_directory.search_all_users, among all of them and every local account)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import CompoundSelect, Select, and_, func, insert, or_, select, union, update

from homeserver.storage.cs_schema import user_directory
from homeserver.storage.engine import Database
from homeserver.storage.schema import current_state, events, rooms, users


@dataclass(slots=True, frozen=True)
class DirectoryEntry:
    user_id: str
    display_name: str | None
    avatar_url: str | None


class UserDirectoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert(self, user_id: str, display_name: str | None, avatar_url: str | None) -> None:
        search_text = f"{user_id} {display_name or ''}".lower()
        values = dict(display_name=display_name, avatar_url=avatar_url, search_text=search_text)
        async with self.db.write() as conn:
            res = await conn.execute(
                update(user_directory).where(user_directory.c.user_id == user_id).values(**values)
            )
            if not res.rowcount:
                await conn.execute(insert(user_directory).values(user_id=user_id, **values))

    async def search(
        self, searcher: str, terms: list[str], limit: int, *, all_users: bool = False
    ) -> list[DirectoryEntry]:
        """Users matching every term, among those sharing a joined room with `searcher` or
        joined to a public room; with `all_users`, among every active local account and every
        user seen in a room (user_directory.search_all_users)."""
        members = (_all_users() if all_users else _visible_to(searcher)).subquery()
        ud, u = user_directory, users
        # Local users who never joined a room have no directory row: their account's profile.
        display_name = func.coalesce(ud.c.display_name, u.c.displayname)
        fallback_text = members.c.user_id + " " + func.coalesce(u.c.displayname, "")
        text = func.lower(func.coalesce(ud.c.search_text, fallback_text))
        conditions = [text.contains(t.lower(), autoescape=True) for t in terms]
        q = (
            select(members.c.user_id, display_name, func.coalesce(ud.c.avatar_url, u.c.avatar_url))
            .select_from(
                members.outerjoin(ud, ud.c.user_id == members.c.user_id).outerjoin(
                    u, u.c.user_id == members.c.user_id
                )
            )
            .where(and_(*conditions))
            .order_by(func.lower(func.coalesce(display_name, members.c.user_id)), members.c.user_id)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [DirectoryEntry(user, name, avatar) for user, name, avatar in await conn.execute(q)]


def _visible_to(searcher: str) -> Select[tuple[str]]:
    """Users joined to a room `searcher` is joined to, or to a public room (published, or
    with a public join rule)."""
    cs = current_state
    my_rooms = select(cs.c.room_id).where(
        cs.c.state_key == searcher, cs.c.type == "m.room.member", cs.c.membership == "join"
    )
    published = select(rooms.c.room_id).where(rooms.c.is_public.is_(True))
    public_rule = (
        select(cs.c.room_id)
        .select_from(cs.join(events, events.c.event_id == cs.c.event_id))
        .where(
            cs.c.type == "m.room.join_rules",
            cs.c.state_key == "",
            or_(
                events.c.json.like('%"join_rule":"public"%'),
                events.c.json.like('%"join_rule": "public"%'),
            ),
        )
    )
    visible_rooms = union(my_rooms, published, public_rule).subquery()
    return (
        select(cs.c.state_key.label("user_id"))
        .distinct()
        .where(
            cs.c.room_id.in_(select(visible_rooms.c.room_id)),
            cs.c.type == "m.room.member",
            cs.c.membership == "join",
        )
    )


def _all_users() -> CompoundSelect[tuple[str]]:
    """Every active local account (not guests), and every user seen joining a room except
    local accounts since deactivated."""
    gone = select(users.c.user_id).where(or_(users.c.deactivated.is_(True), users.c.is_guest.is_(True)))
    active = select(users.c.user_id.label("user_id")).where(
        users.c.deactivated.is_(False), users.c.is_guest.is_(False)
    )
    seen = select(user_directory.c.user_id.label("user_id")).where(user_directory.c.user_id.not_in(gone))
    return union(active, seen)
