"""The user directory, searchable among the users the searcher shares a room with or who
are in public rooms (or, with user_directory.search_all_users, among all of them and every
local account).

As in Synapse, a local user is always listed with their account's global profile (the
`users` row, which `PUT /profile` updates), never with a display name or avatar they set in
one room only: those can be private to that room. Remote users' profiles come from their
latest join event seen here (the `user_directory` table). Locked and deactivated accounts
are never listed (Synapse's `user_directory.show_locked_users` defaults to false)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import CompoundSelect, Select, and_, case, delete, func, insert, or_, select, union, update

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
        """Record a remote user's profile from a join event. Local accounts are skipped (and
        any row an older version kept for them dropped): they are listed by their account's
        profile, which a per-room display name must not replace."""
        search_text = f"{user_id} {display_name or ''}".lower()
        values = dict(display_name=display_name, avatar_url=avatar_url, search_text=search_text)
        async with self.db.write() as conn:
            local = (await conn.execute(select(users.c.user_id).where(users.c.user_id == user_id))).first()
            if local is not None:
                await conn.execute(delete(user_directory).where(user_directory.c.user_id == user_id))
                return
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
        user seen in a room (user_directory.search_all_users). Locked and deactivated local
        accounts are left out either way."""
        members = (_all_users() if all_users else _visible_to(searcher)).subquery()
        ud, u = user_directory, users
        local = u.c.user_id.is_not(None)
        display_name = case((local, u.c.displayname), else_=ud.c.display_name)
        avatar_url = case((local, u.c.avatar_url), else_=ud.c.avatar_url)
        raw_text = members.c.user_id + " " + func.coalesce(display_name, "")
        # Remote users' text was lower-cased in Python; local users' is folded here, by every
        # script (SQLite's own lower() folds ASCII only: storage.engine.unicode_lower).
        lower = func.lower if self.db.is_postgres else func.unicode_lower
        text = case((local, lower(raw_text)), else_=func.coalesce(ud.c.search_text, lower(raw_text)))
        conditions = [text.contains(t.lower(), autoescape=True) for t in terms]
        listed = or_(~local, and_(u.c.deactivated.is_(False), u.c.locked.is_(False)))
        q = (
            select(members.c.user_id, display_name, avatar_url)
            .select_from(
                members.outerjoin(ud, ud.c.user_id == members.c.user_id).outerjoin(
                    u, u.c.user_id == members.c.user_id
                )
            )
            .where(listed, *conditions)
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
