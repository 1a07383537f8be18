"""Who a request acts for, beyond the sender of the events it creates: a server admin (the
admin API sends as other users: redactions of a spammer's messages, joins, room repairs)
or an application service (acting as its users). Checks about the sender itself, such as
re-consent to changed terms (homeserver/handlers/consent.py), do not apply to those, as in
Synapse, which looks at the request's authenticated entity.

Kept in a context variable: set once the request is authenticated, it holds for the rest of
that request's task and for the tasks it starts (an admin job), and for nothing else.
"""

from __future__ import annotations

from contextvars import ContextVar

ADMIN = "admin"
APPSERVICE = "appservice"

_ACTING: ContextVar[str | None] = ContextVar("sotto_acting", default=None)


def act_as(kind: str) -> None:
    """The current request (and the tasks it starts from here on) acts as `kind`."""
    _ACTING.set(kind)


def acting() -> str | None:
    """ADMIN, APPSERVICE, or None for an ordinary user's own request."""
    return _ACTING.get()
