"""SentMembers: which member events a device holds, by the position that carried them."""

from __future__ import annotations

from homeserver.sync.sent_members import SentMembers


def test_held_from_the_position_that_carried_it() -> None:
    sent = SentMembers()
    sent.record("@b:x", "D", ["$a1"], position=10)
    assert not sent.held("@b:x", "D", "$a1", since=9)
    assert sent.held("@b:x", "D", "$a1", since=10)
    # Another member event (a newer one of the same user), device or user is not held.
    assert not sent.held("@b:x", "D", "$a2", since=10)
    assert not sent.held("@b:x", "E", "$a1", since=10)
    assert not sent.held("@c:x", "D", "$a1", since=10)


def test_resending_keeps_the_earliest_position() -> None:
    sent = SentMembers()
    sent.record("@b:x", "D", ["$a1"], position=10)
    # A retry from an older token sent it again in a later response: either acknowledgement counts.
    sent.record("@b:x", "D", ["$a1"], position=12)
    assert sent.held("@b:x", "D", "$a1", since=10)
    # Recorded first at a later position (a capped response), then at an earlier one.
    sent.record("@b:x", "D", ["$c1"], position=14)
    sent.record("@b:x", "D", ["$c1"], position=13)
    assert sent.held("@b:x", "D", "$c1", since=13)
    assert len(sent) == 2


def test_forget_and_bounds() -> None:
    sent = SentMembers(max_entries=4, per_device=2)
    sent.record("@b:x", "D", ["$a", "$c", "$d"], position=1)
    # Only the last two of a device's entries are kept.
    assert len(sent) == 2
    assert not sent.held("@b:x", "D", "$a", since=1)
    assert sent.held("@b:x", "D", "$d", since=1)
    # Recording a held event again keeps it (and the count).
    sent.record("@b:x", "D", ["$d"], position=2)
    assert len(sent) == 2
    sent.record("@b:x", "E", ["$a"], position=1)
    sent.record("@b:x", "F", ["$a", "$c"], position=1)
    # Five entries, room for four: the device that recorded least recently went, whole.
    assert len(sent) == 3
    assert not sent.held("@b:x", "D", "$d", since=1)
    assert sent.held("@b:x", "E", "$a", since=1)
    sent.forget("@b:x", "F")
    assert len(sent) == 1
    assert not sent.held("@b:x", "F", "$a", since=1)
    # Recording nothing creates nothing (a parked sync's empty response holds no memory).
    sent.record("@z:x", "Z", [], position=1)
    assert len(sent) == 1
    # One device alone may hold its whole share even past the total.
    lone = SentMembers(max_entries=1, per_device=3)
    lone.record("@b:x", "D", ["$a", "$c"], position=1)
    assert lone.held("@b:x", "D", "$a", since=1)
