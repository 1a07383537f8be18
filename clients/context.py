"""What a handler receives: the event, its room, and ways to answer in the right place.

`ctx.reply()` answers as a Matrix reply (`m.in_reply_to`); if the event was in a thread the
answer stays in that thread. `ctx.reply(..., thread=True)` starts a thread on the event instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nio import Event, MatrixRoom

from clients.attachments import Attachment

if TYPE_CHECKING:
    from clients.bot import Bot


def relates_to(event: Event) -> dict[str, Any]:
    content = event.source.get("content", {}) if isinstance(event.source, dict) else {}
    rel = content.get("m.relates_to")
    return rel if isinstance(rel, dict) else {}


def thread_root_of(event: Event) -> str | None:
    rel = relates_to(event)
    if rel.get("rel_type") == "m.thread" and isinstance(rel.get("event_id"), str):
        return str(rel["event_id"])
    return None


@dataclass
class Context:
    bot: Bot
    room: MatrixRoom
    event: Event

    @property
    def room_id(self) -> str:
        return str(self.room.room_id)

    @property
    def sender(self) -> str:
        return str(self.event.sender)

    @property
    def event_id(self) -> str:
        return str(self.event.event_id)

    @property
    def content(self) -> dict[str, Any]:
        source = self.event.source if isinstance(self.event.source, dict) else {}
        content = source.get("content", {})
        return content if isinstance(content, dict) else {}

    @property
    def body(self) -> str:
        body = self.content.get("body")
        return body if isinstance(body, str) else ""

    @property
    def thread_root(self) -> str | None:
        return thread_root_of(self.event)

    @property
    def encrypted(self) -> bool:
        return bool(getattr(self.event, "decrypted", False))

    @property
    def attachment(self) -> Attachment | None:
        return Attachment.from_content(self.content)

    def reply_relation(self, thread: bool = False) -> dict[str, Any]:
        """`m.relates_to` for an answer to this event, keeping or starting a thread."""
        in_reply_to = {"event_id": self.event_id}
        root = self.thread_root
        if root is not None:
            return {
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": False,
                "m.in_reply_to": in_reply_to,
            }
        if thread:
            return {
                "rel_type": "m.thread",
                "event_id": self.event_id,
                "is_falling_back": True,
                "m.in_reply_to": in_reply_to,
            }
        return {"m.in_reply_to": in_reply_to}

    async def reply(
        self, text: str, *, thread: bool = False, markdown: bool | None = None, notice: bool | None = None
    ) -> str:
        return await self.bot.send_text(
            self.room_id, text, markdown=markdown, notice=notice, relates_to=self.reply_relation(thread)
        )

    async def send(self, text: str, *, markdown: bool | None = None, notice: bool | None = None) -> str:
        """A message in the same room (and thread, if any), not marked as a reply."""
        root = self.thread_root
        rel = (
            {
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": self.event_id},
            }
            if root
            else None
        )
        return await self.bot.send_text(self.room_id, text, markdown=markdown, notice=notice, relates_to=rel)

    async def react(self, key: str) -> str:
        return await self.bot.react(self.room_id, self.event_id, key)

    async def send_file(self, data: bytes, filename: str, mimetype: str | None = None) -> str:
        return await self.bot.send_file(
            self.room_id, data, filename, mimetype, relates_to=self.reply_relation()
        )

    async def download(self) -> bytes:
        attachment = self.attachment
        if attachment is None:
            raise ValueError("this event has no attachment")
        return await self.bot.download(attachment)

    @asynccontextmanager
    async def typing(self) -> AsyncIterator[None]:
        async with self.bot.typing(self.room_id):
            yield
