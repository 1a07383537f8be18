"""Matrix errors as data.

Every error a client sees is a `MatrixError`: an HTTP status, an errcode and a
message. Anything else raised while handling a request becomes 500 M_UNKNOWN
and is logged (never shown to the client).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class Codes(StrEnum):
    UNKNOWN = "M_UNKNOWN"
    UNRECOGNIZED = "M_UNRECOGNIZED"
    FORBIDDEN = "M_FORBIDDEN"
    UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
    MISSING_TOKEN = "M_MISSING_TOKEN"
    USER_LOCKED = "M_USER_LOCKED"
    USER_SUSPENDED = "M_USER_SUSPENDED"
    USER_DEACTIVATED = "M_USER_DEACTIVATED"
    BAD_JSON = "M_BAD_JSON"
    NOT_JSON = "M_NOT_JSON"
    NOT_FOUND = "M_NOT_FOUND"
    LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
    USER_IN_USE = "M_USER_IN_USE"
    INVALID_USERNAME = "M_INVALID_USERNAME"
    ROOM_IN_USE = "M_ROOM_IN_USE"
    INVALID_ROOM_STATE = "M_INVALID_ROOM_STATE"
    UNSUPPORTED_ROOM_VERSION = "M_UNSUPPORTED_ROOM_VERSION"
    INCOMPATIBLE_ROOM_VERSION = "M_INCOMPATIBLE_ROOM_VERSION"
    BAD_STATE = "M_BAD_STATE"
    GUEST_ACCESS_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"
    MISSING_PARAM = "M_MISSING_PARAM"
    INVALID_PARAM = "M_INVALID_PARAM"
    TOO_LARGE = "M_TOO_LARGE"
    EXCLUSIVE = "M_EXCLUSIVE"
    THREEPID_IN_USE = "M_THREEPID_IN_USE"
    THREEPID_AUTH_FAILED = "M_THREEPID_AUTH_FAILED"
    THREEPID_NOT_FOUND = "M_THREEPID_NOT_FOUND"
    THREEPID_DENIED = "M_THREEPID_DENIED"
    THREEPID_MEDIUM_NOT_SUPPORTED = "M_THREEPID_MEDIUM_NOT_SUPPORTED"
    SERVER_NOT_TRUSTED = "M_SERVER_NOT_TRUSTED"
    UNAUTHORIZED = "M_UNAUTHORIZED"
    WEAK_PASSWORD = "M_WEAK_PASSWORD"
    INVALID_SIGNATURE = "M_INVALID_SIGNATURE"
    RESOURCE_LIMIT_EXCEEDED = "M_RESOURCE_LIMIT_EXCEEDED"
    CANNOT_LEAVE_SERVER_NOTICE_ROOM = "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM"
    UNABLE_TO_AUTHORISE_JOIN = "M_UNABLE_TO_AUTHORISE_JOIN"
    UNABLE_TO_GRANT_JOIN = "M_UNABLE_TO_GRANT_JOIN"
    KEY_NOT_FOUND = "M_NOT_FOUND"
    WRONG_ROOM_KEYS_VERSION = "M_WRONG_ROOM_KEYS_VERSION"
    # Sliding sync (MSC4186): the connection position is not known; start again.
    UNKNOWN_POS = "M_UNKNOWN_POS"
    INVITE_BLOCKED = "M_INVITE_BLOCKED"


class MatrixError(Exception):
    """An error with a Matrix errcode, shown to the client as JSON."""

    def __init__(
        self,
        status: int,
        errcode: Codes | str,
        message: str,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = str(errcode)
        self.message = message
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.message}
        body.update(self.extra)
        return body


def forbidden(message: str = "Forbidden") -> MatrixError:
    return MatrixError(403, Codes.FORBIDDEN, message)


def not_found(message: str = "Not found") -> MatrixError:
    return MatrixError(404, Codes.NOT_FOUND, message)


def bad_json(message: str) -> MatrixError:
    return MatrixError(400, Codes.BAD_JSON, message)


def missing_param(name: str) -> MatrixError:
    return MatrixError(400, Codes.MISSING_PARAM, f"Missing parameter: {name}")


# Fields of a JSON request body, with the spec's errors for a missing or mistyped one.


def require_str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        raise missing_param(key)
    if not isinstance(value, str):
        raise bad_json(f"{key} must be a string")
    return value


def optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_json(f"{key} must be a string")
    return value


def require_bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        raise missing_param(key)
    if not isinstance(value, bool):
        raise bad_json(f"{key} must be a boolean")
    return value


def optional_bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise bad_json(f"{key} must be a boolean")
    return value


def invalid_param(message: str) -> MatrixError:
    return MatrixError(400, Codes.INVALID_PARAM, message)


def unrecognized(message: str = "Unrecognized request") -> MatrixError:
    return MatrixError(404, Codes.UNRECOGNIZED, message)


class InteractiveAuthRequired(MatrixError):
    """401 with the user-interactive auth flows body."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(401, body.get("errcode", ""), body.get("error", ""))
        self.body = body

    def to_json(self) -> dict[str, Any]:
        return self.body
