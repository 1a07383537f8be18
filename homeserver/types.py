"""Identifier types shared across the server.

NewTypes make it a type error to pass a room ID where a user ID is expected,
at no runtime cost.
"""

from __future__ import annotations

from typing import Any, NewType

JsonDict = dict[str, Any]

UserID = NewType("UserID", str)
RoomID = NewType("RoomID", str)
EventID = NewType("EventID", str)
DeviceID = NewType("DeviceID", str)
