"""Sotto's bot SDK: encrypted, cross-signed Matrix bots on matrix-nio.

Quickstart (`docs/bots.md`): `sotto-bot login`, then a module with a `Bot` and commands, run
with `sotto-bot run echo.py` or `python echo.py`.
"""

from clients.attachments import Attachment
from clients.bot import Bot, BotError, SendError
from clients.commands import CommandError
from clients.config import BotConfig
from clients.context import Context
from clients.trust import TrustMode, TrustPolicy

__all__ = [
    "Attachment",
    "Bot",
    "BotConfig",
    "BotError",
    "CommandError",
    "Context",
    "SendError",
    "TrustMode",
    "TrustPolicy",
]
