"""Shared fixtures: every test that takes ``backend`` runs on each CPU backend under test.

Backends under test: ``NORMCORE_TEST_BACKEND`` (comma list), else every available CPU backend
except the ``array-api*`` ones (they run the conformance kit, ``normcore/testing``, and
tests/test_array_api.py by default; the whole suite on them only when named here).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import normcore


def _cpu_backends() -> list[str]:
    named = [n.strip() for n in os.environ.get("NORMCORE_TEST_BACKEND", "").split(",") if n.strip()]
    if named:
        return named
    return [b.name for b in normcore.list_backends(check=True) if b.available and b.device == "cpu"
            and not b.name.startswith("array-api")]


BACKENDS = _cpu_backends()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
