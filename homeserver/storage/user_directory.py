"""The user directory: profiles of users seen joining rooms, searchable among the users
the searcher shares a room with or who are in public rooms."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, insert, or_, select, union, update

from homeserver.storage.cs_schema import user_directory
from homeserver.storage.engine import Database
from homeserver.storage.schema import current_state, events, rooms


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

    async def search(self, searcher: str, terms: list[str], limit: int) -> list[DirectoryEntry]:
        """Users sharing a joined room with `searcher` or joined to a public room, matching every term."""
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
        members = (
            select(cs.c.state_key.label("user_id"))
            .distinct()
            .where(
                cs.c.room_id.in_(select(visible_rooms.c.room_id)),
                cs.c.type == "m.room.member",
                cs.c.membership == "join",
            )
            .subquery()
        )
        ud = user_directory
        text = func.lower(func.coalesce(ud.c.search_text, members.c.user_id))
        conditions = [text.contains(t.lower(), autoescape=True) for t in terms]
        q = (
            select(members.c.user_id, ud.c.display_name, ud.c.avatar_url)
            .select_from(members.outerjoin(ud, ud.c.user_id == members.c.user_id))
            .where(and_(*conditions))
            .order_by(func.lower(func.coalesce(ud.c.display_name, members.c.user_id)), members.c.user_id)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [DirectoryEntry(u, d, a) for u, d, a in await conn.execute(q)]
