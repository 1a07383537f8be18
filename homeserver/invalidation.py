"""Cache invalidations (and typing, the one piece of state kept only in memory) between
worker processes.

A cache of data that any worker may change (access tokens, push rules, a room's push
context) subscribes to a topic here, and the code that changes the data broadcasts on it
after the change has committed. In one process nothing travels: the changer drops its own
cache directly. With several workers `attach` connects the hub to the Redis bridge, which
delivers each broadcast to the other workers' subscribers.

Delivery is at most once. Whenever some may have been lost (a reconnect to Redis, an
overflow), every `on_reset` handler runs and drops its whole cache instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Handler = Callable[[Any], None]

# The bridge calls this topic's handlers when invalidations may have been lost.
RESET_TOPIC = "reset"


class Transport(Protocol):
    def broadcast(self, topic: str, payload: Any) -> None: ...

    def subscribe(self, topic: str, handler: Handler) -> None: ...


class Invalidations:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._transport: Transport | None = None

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call `handler(payload)` for every broadcast on `topic` made by another worker."""
        self._handlers.setdefault(topic, []).append(handler)
        if self._transport is not None:
            self._transport.subscribe(topic, handler)

    def on_reset(self, handler: Callable[[], None]) -> None:
        """Call `handler()` when invalidations from other workers may have been lost."""
        self.subscribe(RESET_TOPIC, lambda _payload: handler())

    def broadcast(self, topic: str, payload: Any) -> None:
        """Tell the other workers (JSON `payload`); a no-op in a single process."""
        if self._transport is not None:
            self._transport.broadcast(topic, payload)

    def attach(self, transport: Transport) -> None:
        self._transport = transport
        for topic, handlers in self._handlers.items():
            for handler in handlers:
                transport.subscribe(topic, handler)
