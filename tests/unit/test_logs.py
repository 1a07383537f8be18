"""Log formats: JSON lines carry the message and structured fields."""

from __future__ import annotations

import json
import logging

import pytest

from homeserver.config import ConfigError, config_from_dict
from homeserver.logs import JsonFormatter


def test_json_lines_have_message_level_and_extra_fields() -> None:
    record = logging.makeLogRecord(
        {
            "name": "sotto.test",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "room %s busy",
            "args": ("!r:x",),
            "room_id": "!r:x",
        }
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "room !r:x busy"
    assert line["level"] == "WARNING" and line["logger"] == "sotto.test"
    assert line["room_id"] == "!r:x"


def test_unknown_log_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        config_from_dict({"log_format": "xml"})
