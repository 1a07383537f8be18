"""What a verification shows the operator (`SasPrompt`), how it ends (`VerificationResult`), and
which room events belong to one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

PREFIX = "m.key.verification."
REQUEST_MSGTYPE = "m.key.verification.request"


def is_verification_event(event_type: str, content: Any) -> bool:
    """Room events that belong to a key verification (the request is a room message)."""
    if event_type == "m.room.message":
        return isinstance(content, dict) and content.get("msgtype") == REQUEST_MSGTYPE
    return event_type.startswith(PREFIX)


@dataclass(frozen=True, slots=True)
class SasPrompt:
    user_id: str
    device_id: str
    emojis: list[tuple[str, str]]
    decimals: tuple[int, ...]

    def describe(self) -> str:
        emoji = "  ".join(f"{symbol} {name}" for symbol, name in self.emojis)
        numbers = " ".join(str(n) for n in self.decimals)
        return f"Verifying {self.user_id} / {self.device_id}\n  {emoji}\n  or the numbers: {numbers}"


@dataclass(frozen=True, slots=True)
class VerificationResult:
    user_id: str
    device_id: str
    verified: bool
    reason: str = ""
    code: str = ""  # the spec's cancel code when canceled (`m.mismatched_sas`, …)
    # Their master key, when the verification proved it and the bot signed it (another user).
    master_key: str | None = None
    # The bot's own other device, verified and now signed with the bot's self-signing key.
    signed_device: bool = False


Confirm = Callable[[SasPrompt], Awaitable[bool]]
