"""Shadow-banned accounts (Synapse's admin API, for spammers): what they send answers
success and reaches no one, so they take longer to notice and move to another account.

Messages, state events and redactions get an event ID that names nothing (`fake_event_id`),
invites (also createRoom's `invite` list) are dropped, typing is ignored. Everything else,
joins included, works as usual; the user's own view of the room simply lacks what they
sent. A last resort: a ban or a kick is usually the better tool.
"""

from __future__ import annotations

import secrets


def fake_event_id() -> str:
    """An event ID shaped like a real one (room versions 4 and later), naming no event."""
    return "$" + secrets.token_urlsafe(32)
