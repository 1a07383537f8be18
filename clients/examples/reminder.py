"""Reminder bot: `!remind 10m stretch your legs`, `!reminders`, `!forget 3`.

Reminders are kept in the bot's store (`reminders.json`), so they survive restarts; one that
fell due while the bot was down is delivered as soon as it is back. The schedule takes an
injectable clock, so tests run without waiting.

Run: `sotto-bot run clients/examples/reminder.py`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from clients import Bot, CommandError, Context
from clients.store import StoreDir

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DELAY_S = 366 * 86400
MAX_PER_ROOM = 100


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `1h30m`, `2d` → seconds."""
    parts = re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd])+", text.strip().lower())
    if not parts:
        raise CommandError(f"{text!r} is not a duration like 10m, 1h30m or 2d")
    seconds = sum(float(n) * UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", text.lower()))
    if not 0 < seconds <= MAX_DELAY_S:
        raise CommandError("a reminder must be between 1 second and a year away")
    return seconds


@dataclass
class Reminder:
    id: int
    room_id: str
    user_id: str
    due: float
    text: str


class ReminderBook:
    """Pending reminders, persisted in the store after every change."""

    FILE = "reminders.json"

    def __init__(self, store: StoreDir, now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.now = now
        data = store.read_json(self.FILE) or {}
        self.items = {r["id"]: Reminder(**r) for r in data.get("reminders", [])}
        self.next_id = int(data.get("next_id", 1))
        self.changed = asyncio.Event()

    def add(self, room_id: str, user_id: str, delay: float, text: str) -> Reminder:
        if sum(1 for r in self.items.values() if r.room_id == room_id) >= MAX_PER_ROOM:
            raise CommandError(f"this room already has {MAX_PER_ROOM} reminders")
        reminder = Reminder(self.next_id, room_id, user_id, self.now() + delay, text)
        self.items[reminder.id] = reminder
        self.next_id += 1
        self._save()
        return reminder

    def remove(self, reminder_id: int) -> Reminder | None:
        reminder = self.items.pop(reminder_id, None)
        if reminder is not None:
            self._save()
        return reminder

    def due(self) -> list[Reminder]:
        now = self.now()
        return sorted((r for r in self.items.values() if r.due <= now), key=lambda r: r.due)

    def seconds_to_next(self) -> float | None:
        if not self.items:
            return None
        return max(0.0, min(r.due for r in self.items.values()) - self.now())

    def _save(self) -> None:
        self.store.write_json(
            self.FILE, {"next_id": self.next_id, "reminders": [asdict(r) for r in self.items.values()]}
        )
        self.changed.set()


def install(bot: Bot, now: Callable[[], float] = time.time) -> None:
    """Add the reminder commands and the delivery loop to a bot.

    The book is opened lazily, from the store the bot finally uses (`--store` may change it)."""
    book: dict[str, ReminderBook] = {}
    tasks: list[asyncio.Task[None]] = []

    def get_book() -> ReminderBook:
        if "book" not in book:
            book["book"] = ReminderBook(bot.store, now)
        return book["book"]

    async def deliver_forever() -> None:
        reminders = get_book()
        while True:
            for reminder in reminders.due():
                await bot.send_text(reminder.room_id, f"⏰ {reminder.user_id}: {reminder.text}", notice=False)
                reminders.remove(reminder.id)
            reminders.changed.clear()
            wait = reminders.seconds_to_next()
            try:
                await asyncio.wait_for(
                    reminders.changed.wait(), timeout=None if wait is None else min(wait, 60)
                )
            except TimeoutError:
                pass

    @bot.on_startup
    async def start_delivery() -> None:
        tasks.append(asyncio.create_task(deliver_forever()))

    @bot.on_shutdown
    async def stop_delivery() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @bot.command("remind", help="Remind you after a while: `!remind 10m stretch`.")
    async def remind(ctx: Context, when: str, *, text: str) -> None:
        reminder = get_book().add(ctx.room_id, ctx.sender, parse_duration(when), text)
        await ctx.reply(f"Reminder {reminder.id} set for {when} from now.")

    @bot.command("reminders", help="List this room's pending reminders.")
    async def reminders(ctx: Context) -> None:
        pending = sorted(
            (r for r in get_book().items.values() if r.room_id == ctx.room_id), key=lambda r: r.due
        )
        if not pending:
            await ctx.reply("No reminders pending.")
            return
        current = now()
        lines = [f"- {r.id}: in {max(0, int(r.due - current))}s — {r.text}" for r in pending]
        await ctx.reply("\n".join(lines))

    @bot.command("forget", help="Cancel a reminder by its number.")
    async def forget(ctx: Context, reminder_id: int) -> None:
        reminder = get_book().items.get(reminder_id)
        if reminder is None or reminder.room_id != ctx.room_id:
            raise CommandError(f"no reminder {reminder_id} in this room")
        get_book().remove(reminder_id)
        await ctx.reply(f"Forgot reminder {reminder_id}.")


bot = Bot.from_env()
install(bot)

if __name__ == "__main__":
    bot.run()
