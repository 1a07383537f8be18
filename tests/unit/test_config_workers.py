"""`workers` in the config file: a process's place among separately started workers."""

from __future__ import annotations

import pytest

from homeserver.config import ConfigError, config_from_dict


def _workers(**workers: object) -> dict[str, object]:
    return {"server_name": "example.org", "workers": workers}


def test_a_place_among_separately_started_workers() -> None:
    config = config_from_dict(_workers(count=3, index=2, sockets="/run/sotto-workers"))
    assert (config.workers.count, config.workers.index, config.workers.sockets) == (
        3,
        2,
        "/run/sotto-workers",
    )
    assert config_from_dict(_workers()).workers.index is None


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        ({"count": 2, "index": 2}, "workers.index"),
        ({"count": 2, "index": -1}, "workers.index"),
        ({"count": 2, "index": "0"}, "workers.index"),
        ({"count": 2, "index": True}, "workers.index"),
        ({"count": 0}, "workers.count"),
    ],
)
def test_a_place_outside_the_workers_is_refused(workers: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_workers(**workers))
