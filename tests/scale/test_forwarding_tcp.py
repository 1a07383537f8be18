"""Forwarding between workers on several hosts: TCP between the workers, each connection
opened with a challenge answered under the workers' shared secret (homeserver.forwarding).
The in-process pairs of test_forwarding.py, linked by TCP on loopback instead of sockets."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from homeserver import jsonutil
from homeserver.config import ConfigError, config_from_dict
from homeserver.forwarding import Links, room_owner
from tests.scale.services import SottoProcesses
from tests.scale.test_forwarding import (
    Pair,
    _event_count,
    _make_busy_and_shared,
    _txn_rows,
    busy_room_through_both,
    worker_pair,
)
from tests.support.server import free_port

pytestmark = pytest.mark.timeout(120)
SECRET = secrets.token_hex(24)


def tcp_links(ports: list[int], secret: str = SECRET) -> dict[str, Any]:
    return {"peers": [f"127.0.0.1:{p}" for p in ports], "secret": secret}


@pytest.fixture
async def tcp_pair(pg_url: str, tmp_path: Path) -> AsyncIterator[Pair]:
    links = tcp_links([free_port(), free_port()])
    async with worker_pair(pg_url, tmp_path, [links, links]) as made:
        yield made


async def _frame(reader: asyncio.StreamReader) -> Any:
    size = int.from_bytes(await reader.readexactly(4), "big")
    return jsonutil.loads(await reader.readexactly(size))


def _encode(message: Any) -> bytes:
    data = jsonutil.dumpb(message)
    return len(data).to_bytes(4, "big") + data


async def test_workers_on_several_hosts_forward_over_tcp(tcp_pair: Pair) -> None:
    owner, other = tcp_pair.owner(), tcp_pair.other()
    _make_busy_and_shared(other, tcp_pair.room, tcp_pair.users)
    event_id = await other.client.send(tcp_pair.room, "over tcp", "t1")
    assert other.forwarding.forwarded == 1 and owner.forwarding.created_for_others == 1
    assert await _txn_rows(owner, "t1") == [event_id]


async def test_a_connection_that_cannot_answer_the_challenge_is_closed(tcp_pair: Pair) -> None:
    owner = tcp_pair.owner()
    host, port = owner.forwarding.links.address(owner.forwarding.index)
    request = {
        "i": 1,
        "room_id": tcp_pair.room,
        "type": "m.room.message",
        "sender": tcp_pair.users[0],
        "content": {"msgtype": "m.text", "body": "forged"},
        "txn": [tcp_pair.users[0], "DEV", "forged"],
    }
    count = await _event_count(owner, tcp_pair.room)
    for first in ({"auth": "0" * 64}, request):  # a wrong answer; no answer at all
        reader, writer = await asyncio.open_connection(host, port)
        challenge = await _frame(reader)
        assert isinstance(challenge["nonce"], str) and len(challenge["nonce"]) == 32
        writer.write(_encode(first) + _encode(request))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        writer.close()
    assert await _event_count(owner, tcp_pair.room) == count
    assert owner.forwarding.created_for_others == 0
    # The right answer, under the secret, opens the connection.
    reader, writer = await asyncio.open_connection(host, port)
    challenge = await _frame(reader)
    writer.write(
        _encode({"auth": Links(secret=SECRET.encode()).proof(challenge["nonce"])}) + _encode(request)
    )
    await writer.drain()
    answer = await asyncio.wait_for(_frame(reader), 10)
    writer.close()
    assert answer["i"] == 1 and answer["event_id"].startswith("$")
    assert owner.forwarding.created_for_others == 1


async def test_a_worker_with_the_wrong_secret_creates_its_messages_itself(
    pg_url: str, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    right, wrong = tcp_links(ports), tcp_links(ports, secrets.token_hex(24))
    async with worker_pair(pg_url, tmp_path, [right, wrong]) as made:
        # Whichever way the message goes, the two workers prove different secrets.
        sender = made.other()
        _make_busy_and_shared(sender, made.room, made.users)
        event_id = await sender.client.send(made.room, "mine", "w1")
        assert sender.forwarding.fallbacks == 1 and sender.forwarding.forwarded == 0
        assert made.owner().forwarding.created_for_others == 0
        assert await _txn_rows(sender, "w1") == [event_id]


def test_tcp_peers_need_a_secret_and_an_address_per_worker() -> None:
    def config(**workers: Any) -> Any:
        return config_from_dict(
            {"server_name": "example.org", "workers": {"count": 2, "index": 0, **workers}}
        )

    assert config(**tcp_links([9001, 9002])).workers.peers == ["127.0.0.1:9001", "127.0.0.1:9002"]
    for workers, message in (
        ({"peers": ["a:1", "b:2"]}, "secret"),
        ({"peers": ["a:1", "b:2"], "secret": "short"}, "secret"),
        ({"peers": ["a:1"], "secret": SECRET}, "one host:port per worker"),
        ({"peers": ["a:1", "b"], "secret": SECRET}, "not host:port"),
        ({"peers": ["a:1", "b:2"], "secret": SECRET, "sockets": "/run/x"}, "not both"),
    ):
        with pytest.raises(ConfigError, match=message):
            config(**workers)


async def test_separately_started_workers_forward_over_tcp(
    workdir: Path, pg_url: str, redis_url: str
) -> None:
    """Two `sotto serve` processes, configured as workers on different hosts would be (TCP
    peers and a shared secret), forward a busy room's messages to its owner."""
    procs = SottoProcesses(workdir, pg_url, redis_url)
    procs.start_independent(2, tcp_secret=SECRET)
    try:
        counts, room = await busy_room_through_both(procs, pg_url, "tcp")
        other = str(1 - room_owner(room, 2))
        assert counts[other]["sotto_forwarded_messages"] > 0, counts
        assert counts[other]["sotto_forwarding_fallbacks"] == 0, counts
    finally:
        procs.stop()
