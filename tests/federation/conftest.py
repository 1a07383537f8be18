from __future__ import annotations

import os

import pytest

from tests.federation.support import CertAuthority, make_ca


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
