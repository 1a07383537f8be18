"""Room state: state resolution v2 / v2.1 and auth chains.

Pure algorithms over events fetched through an :class:`EventSource`; no
storage access of its own.
"""

from homeserver.state.auth_chain import get_auth_chain
from homeserver.state.resolution import resolve_state
from homeserver.state.types import EventSource, StateKey, StateMap

__all__ = ["EventSource", "StateKey", "StateMap", "get_auth_chain", "resolve_state"]
