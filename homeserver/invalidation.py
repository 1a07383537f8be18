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

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

Handler = Callable[[Any], None]

# The bridge calls this topic's handlers when invalidations may have been lost.
RESET_TOPIC = "reset"

K = TypeVar("K")
V = TypeVar("V")


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


class InvalidatedCache(Generic[K, V]):
    """A bounded LRU cache of data that invalidations drop.

    A reader takes `generation` before it reads the database and hands it to `put`: if an
    invalidation came in meanwhile, what it read may be stale and is not kept.
    """

    __slots__ = ("_data", "generation", "size")

    def __init__(self, size: int) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self.size = size
        self.generation = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V, generation: int) -> None:
        if generation != self.generation:
            return
        self._data[key] = value
        if len(self._data) > self.size:
            self._data.popitem(last=False)

    def drop(self, keys: Iterable[K]) -> None:
        self.generation += 1
        for key in keys:
            self._data.pop(key, None)

    def drop_where(self, stale: Callable[[V], bool]) -> None:
        self.drop([k for k, v in self._data.items() if stale(v)])

    def clear(self) -> None:
        self.generation += 1
        self._data.clear()
