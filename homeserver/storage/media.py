"""Local media metadata and cached thumbnails (the bytes live on disk, see handlers.media)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from homeserver import jsonutil
from homeserver.storage.cs_schema import media, media_thumbnails
from homeserver.storage.engine import Database
from homeserver.storage.schema import current_state, events, users
from homeserver.storage.sqlutil import chunks


@dataclass(slots=True, frozen=True)
class MediaInfo:
    media_id: str
    user_id: str
    content_type: str | None
    upload_name: str | None
    size: int | None
    created_ts: int
    uploaded_ts: int | None
    expires_ts: int | None
    quarantined: bool
    safe_from_quarantine: bool = False  # only local media can be protected

    @property
    def uploaded(self) -> bool:
        return self.uploaded_ts is not None


@dataclass(slots=True, frozen=True)
class ThumbnailInfo:
    width: int
    height: int
    method: str
    content_type: str
    size: int


_INFO_COLUMNS = (
    media.c.media_id,
    media.c.user_id,
    media.c.content_type,
    media.c.upload_name,
    media.c.size,
    media.c.created_ts,
    media.c.uploaded_ts,
    media.c.expires_ts,
    media.c.quarantined,
    media.c.safe_from_quarantine,
)


# Events read per statement when listing a room's media (one room may hold millions).
ROOM_SCAN_CHUNK = 1000


def _info(row: Any) -> MediaInfo:
    return MediaInfo(*row)


def _quarantined_copy(sha256: str) -> Any:
    """True when an item with these bytes is quarantined: a re-upload is quarantined too."""
    return select(exists().where(media.c.sha256 == sha256, media.c.quarantined.is_(True))).scalar_subquery()


def _event_mxcs(event: dict[str, Any]) -> list[str]:
    content = event.get("content")
    if not isinstance(content, dict):
        return []
    info = content.get("info")
    urls = [content.get("url"), info.get("thumbnail_url") if isinstance(info, dict) else None]
    return [u for u in urls if isinstance(u, str) and u.startswith("mxc://")]


class MediaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def reserve(self, media_id: str, user_id: str, now: int, expires_ts: int) -> None:
        """Reserve an ID for a later upload (POST /create)."""
        async with self.db.write() as conn:
            await conn.execute(
                insert(media).values(
                    media_id=media_id,
                    user_id=user_id,
                    created_ts=now,
                    uploaded_ts=None,
                    expires_ts=expires_ts,
                    quarantined=False,
                )
            )

    async def count_pending(self, user_id: str, now: int) -> int:
        async with self.db.read() as conn:
            value = (
                await conn.execute(
                    select(func.count())
                    .select_from(media)
                    .where(
                        media.c.user_id == user_id,
                        media.c.uploaded_ts.is_(None),
                        media.c.expires_ts > now,
                    )
                )
            ).scalar()
        return int(value or 0)

    async def store_uploaded(
        self,
        media_id: str,
        user_id: str,
        content_type: str,
        upload_name: str | None,
        size: int,
        sha256: str,
        now: int,
    ) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                insert(media).values(
                    media_id=media_id,
                    user_id=user_id,
                    content_type=content_type,
                    upload_name=upload_name,
                    size=size,
                    sha256=sha256,
                    created_ts=now,
                    uploaded_ts=now,
                    expires_ts=None,
                    quarantined=_quarantined_copy(sha256),
                )
            )

    async def complete_reserved(
        self, media_id: str, content_type: str, upload_name: str | None, size: int, sha256: str, now: int
    ) -> bool:
        """Fill in a reserved ID; False if it was already uploaded (a race with another upload)."""
        async with self.db.write() as conn:
            res = await conn.execute(
                update(media)
                .where(media.c.media_id == media_id, media.c.uploaded_ts.is_(None))
                .values(
                    content_type=content_type,
                    upload_name=upload_name,
                    size=size,
                    sha256=sha256,
                    uploaded_ts=now,
                    expires_ts=None,
                    quarantined=_quarantined_copy(sha256),
                )
            )
        return bool(res.rowcount)

    async def get(self, media_id: str) -> MediaInfo | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(*_INFO_COLUMNS).where(media.c.media_id == media_id))).first()
        return _info(row) if row else None

    # Administration ------------------------------------------------------------------------

    async def set_quarantined(
        self, flag: bool, *, media_ids: Sequence[str] = (), user_id: str | None = None
    ) -> int:
        """(Un)quarantine the given media, or all of a user's, and every other item with the
        same bytes (SHA-256); how many items changed. Quarantine skips protected media.
        A room's media may be many thousands of IDs: they go in chunks, in one transaction."""
        choices: list[ColumnElement[bool]] = [media.c.media_id.in_(part) for part in chunks(media_ids)]
        if user_id is not None:
            choices.append(media.c.user_id == user_id)
        changed = 0
        async with self.db.write() as conn:
            for chosen in choices:
                same_bytes = media.c.sha256.in_(
                    select(media.c.sha256).where(chosen, media.c.sha256.is_not(None))
                )
                q = update(media).where(or_(chosen, same_bytes), media.c.quarantined != flag)
                if flag:
                    q = q.where(media.c.safe_from_quarantine.is_(False))
                changed += int((await conn.execute(q.values(quarantined=flag))).rowcount)
        return changed

    async def set_protected(self, media_id: str, flag: bool) -> bool:
        """Mark an item safe from quarantine (or not); False for unknown media."""
        async with self.db.write() as conn:
            res = await conn.execute(
                update(media).where(media.c.media_id == media_id).values(safe_from_quarantine=flag)
            )
        return bool(res.rowcount)

    async def mxcs_in_room(self, room_id: str) -> list[str]:
        """The `mxc://` URIs of the room's stored events (`url` and `info.thumbnail_url`), in
        timeline order. Encrypted events hide theirs; redacted events no longer hold theirs."""
        found: dict[str, None] = {}
        after: int | None = None
        while True:
            q = (
                select(events.c.stream_id, events.c.json)
                .where(events.c.room_id == room_id, events.c.json.contains("mxc://", autoescape=True))
                .order_by(events.c.stream_id)
                .limit(ROOM_SCAN_CHUNK)
            )
            if after is not None:
                q = q.where(events.c.stream_id > after)
            async with self.db.read() as conn:
                rows = (await conn.execute(q)).all()
            for stream_id, raw in rows:
                after = stream_id
                for uri in _event_mxcs(jsonutil.loads(raw)):
                    found[uri] = None
            if len(rows) < ROOM_SCAN_CHUNK:
                return list(found)

    async def usage_by_user(
        self,
        offset: int,
        limit: int,
        order_by: str,
        backwards: bool,
        from_ts: int,
        until_ts: int | None,
        search: str | None,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of the users who uploaded media created in [from_ts, until_ts], with how
        many items and bytes, and how many such users there are (the admin API's
        statistics). `search`: a part of the user ID or the display name."""
        count = func.count().label("media_count")
        length = func.coalesce(func.sum(media.c.size), 0).label("media_length")
        where = [media.c.uploaded_ts.is_not(None), media.c.created_ts >= from_ts]
        if until_ts is not None:
            where.append(media.c.created_ts <= until_ts)
        if search:
            where.append(
                or_(
                    media.c.user_id.icontains(search, autoescape=True),
                    users.c.displayname.icontains(search, autoescape=True),
                )
            )
        grouped = (
            select(media.c.user_id, users.c.displayname, count, length)
            .select_from(media.outerjoin(users, users.c.user_id == media.c.user_id))
            .where(*where)
            .group_by(media.c.user_id, users.c.displayname)
        )
        orders: dict[str, Any] = {
            "user_id": media.c.user_id,
            "displayname": users.c.displayname,
            "media_count": count,
            "media_length": length,
        }
        first = orders[order_by]
        tie = media.c.user_id.desc() if backwards else media.c.user_id.asc()
        order = [(first.desc() if backwards else first.asc()).nulls_last(), tie]
        async with self.db.read() as conn:
            total = (await conn.execute(select(func.count()).select_from(grouped.subquery()))).scalar_one()
            rows = await conn.execute(grouped.order_by(*order).offset(offset).limit(limit))
            found = [
                {"user_id": r[0], "displayname": r[1], "media_count": int(r[2]), "media_length": int(r[3])}
                for r in rows
            ]
        return found, int(total)

    async def of_user(
        self, user_id: str, offset: int, limit: int | None, newest_first: bool = True
    ) -> tuple[list[MediaInfo], int]:
        """A page of the user's media (every item with `limit` None) and how many there are."""
        order = (
            (media.c.created_ts.desc(), media.c.media_id)
            if newest_first
            else (media.c.created_ts, media.c.media_id)
        )
        q = select(*_INFO_COLUMNS).where(media.c.user_id == user_id).order_by(*order).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        async with self.db.read() as conn:
            total = (
                await conn.execute(select(func.count()).select_from(media).where(media.c.user_id == user_id))
            ).scalar_one()
            return [_info(row) for row in await conn.execute(q)], int(total)

    async def avatar_media_ids(self, server_name: str) -> set[str]:
        """This server's media in use as a user's avatar or as a room's current avatar."""
        prefix = f"mxc://{server_name}/"
        avatars = (
            select(events.c.json)
            .select_from(current_state.join(events, events.c.event_id == current_state.c.event_id))
            .where(current_state.c.type == "m.room.avatar", current_state.c.state_key == "")
        )
        async with self.db.read() as conn:
            urls = {
                r[0]
                for r in await conn.execute(
                    select(users.c.avatar_url).where(users.c.avatar_url.startswith(prefix, autoescape=True))
                )
            }
            for (raw,) in await conn.execute(avatars):
                url = (jsonutil.loads(raw).get("content") or {}).get("url")
                if isinstance(url, str):
                    urls.add(url)
        return {u.removeprefix(prefix) for u in urls if u.startswith(prefix)}

    async def ids_before(self, before_ts: int, size_gt: int) -> list[str]:
        """Media uploaded before `before_ts` and larger than `size_gt` bytes."""
        q = select(media.c.media_id).where(
            media.c.uploaded_ts.is_not(None), media.c.created_ts < before_ts, media.c.size > size_gt
        )
        async with self.db.read() as conn:
            return [row[0] for row in await conn.execute(q)]

    async def delete(self, media_ids: list[str]) -> list[str]:
        """Forget the media and their thumbnails; returns the IDs that were known."""
        if not media_ids:
            return []
        async with self.db.write() as conn:
            known = [
                row[0]
                for row in await conn.execute(select(media.c.media_id).where(media.c.media_id.in_(media_ids)))
            ]
            await conn.execute(delete(media_thumbnails).where(media_thumbnails.c.media_id.in_(known)))
            await conn.execute(delete(media).where(media.c.media_id.in_(known)))
        return known

    async def get_thumbnail(
        self, media_id: str, width: int, height: int, method: str
    ) -> ThumbnailInfo | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        media_thumbnails.c.width,
                        media_thumbnails.c.height,
                        media_thumbnails.c.method,
                        media_thumbnails.c.content_type,
                        media_thumbnails.c.size,
                    ).where(
                        media_thumbnails.c.media_id == media_id,
                        media_thumbnails.c.width == width,
                        media_thumbnails.c.height == height,
                        media_thumbnails.c.method == method,
                    )
                )
            ).first()
        return ThumbnailInfo(*row) if row else None

    async def add_thumbnail(self, media_id: str, thumb: ThumbnailInfo) -> None:
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    insert(media_thumbnails).values(
                        media_id=media_id,
                        width=thumb.width,
                        height=thumb.height,
                        method=thumb.method,
                        content_type=thumb.content_type,
                        size=thumb.size,
                    )
                )
        except IntegrityError:
            # Another worker generated the same thumbnail first; both files are identical.
            pass
