"""Fixtures for scale and fault tests: databases, Redis, and Sotto worker processes.

Tests here skip (not fail) when PostgreSQL or Redis is not reachable; `.ci/run` starts both.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.scale.services import PrivatePostgres, PrivateRedis, private_services_available
from tests.support.postgres import available, fresh_database


def _redis_up(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, migrated database on the shared PostgreSQL (127.0.0.1:5432)."""
    if not await available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    async with fresh_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    if not _redis_up():
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the test's own, which it may stop and restart."""
    if not private_services_available():
        pytest.skip("initdb/pg_ctl/redis-server are not installed")
    pg = PrivatePostgres()
    try:
        pg.init()
    except Exception as e:
        pg.destroy()
        pytest.skip(f"cannot run a private PostgreSQL: {e}")
    yield pg
    pg.destroy()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    if not private_services_available():
        pytest.skip("redis-server is not installed")
    r = PrivateRedis()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
