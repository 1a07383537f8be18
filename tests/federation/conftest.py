from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.federation.support import CertAuthority, make_ca
from tests.federation.synapse import SynapseServer


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_ca(str(tmp_path_factory.mktemp("ca")))


@pytest.fixture
def tmp_dirs(tmp_path: os.PathLike[str]) -> tuple[str, str]:
    a = os.path.join(str(tmp_path), "a")
    b = os.path.join(str(tmp_path), "b")
    os.makedirs(a)
    os.makedirs(b)
    return a, b


@pytest.fixture(scope="session")
def synapse(test_ca: CertAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    """One real Synapse for the whole session (installed into .cache/synapse-venv on first use)."""
    server = SynapseServer(str(tmp_path_factory.mktemp("synapse")), test_ca)
    server.start()
    try:
        yield server
    finally:
        server.stop()
