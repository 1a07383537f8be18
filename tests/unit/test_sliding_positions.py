"""Sliding sync positions survive the trip through the database's JSON intact."""

from __future__ import annotations

from homeserver.sync.sliding.config import RequiredState, RoomConfig
from homeserver.sync.sliding.connections import MAX_STORED_MEMBERS, Position, RoomSent, decode, encode


def test_a_position_round_trips() -> None:
    lazy = RoomConfig(10, RequiredState(frozenset({("m.room.member", "$LAZY"), ("*", "*")})))
    plain = RoomConfig(1, RequiredState())
    crowd = frozenset(f"@u{i}:test" for i in range(MAX_STORED_MEMBERS + 1))
    position = Position(
        42,
        7,
        {
            "!a:test": RoomSent(40, "join", lazy, frozenset({"@bob:test"}), (3, 1)),
            "!b:test": RoomSent(41, "invite", plain),
            "!c:test": RoomSent(39, "join", lazy, crowd),
        },
        {"all": 3},
        frozenset({"e2ee", "typing"}),
    )
    back = decode(encode(position))
    assert back.rooms["!a:test"] == position.rooms["!a:test"]
    assert back.rooms["!b:test"] == position.rooms["!b:test"]
    # Too many lazy members to keep: they are sent again instead (never a wrong "held").
    assert back.rooms["!c:test"].members == frozenset()
    assert (back.stream, back.ephemeral, back.lists, back.extensions) == (
        42,
        7,
        {"all": 3},
        position.extensions,
    )
    # Each distinct config is written once.
    assert encode(position).count("$LAZY") == 1
