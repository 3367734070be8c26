"""The conformance suite under pytest: every case of :mod:`normcore.testing.cases` against every
backend under test.

Backends under test: ``NORMCORE_TEST_BACKEND`` (a comma list), else every available backend.
``NORMCORE_TEST_QUICK=1`` leaves out the cases with larger arrays (for simulators).

    NORMCORE_TEST_BACKEND=mybackend pytest --pyargs normcore.testing
"""

from __future__ import annotations

import pytest

import normcore
from normcore.config import env_flag, env_str, settings
from normcore.testing.cases import all_cases, applies, takes_dtype


def backends_under_test() -> list[str]:
    named = [n.strip() for n in env_str("NORMCORE_TEST_BACKEND").split(",") if n.strip()]
    if named:
        return named
    return [b.name for b in normcore.list_backends(check=True) if b.available]


QUICK = env_flag("NORMCORE_TEST_QUICK")
CASES = [c for c in all_cases() if not (QUICK and c.big)]


@pytest.fixture(scope="module", params=backends_under_test())
def backend(request):
    return normcore.get_backend(request.param)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conformance(backend, case):
    if not applies(case, backend):
        pytest.skip(f"backend {backend.name!r} does not list the optional {case.kernels}")
    if not takes_dtype(case, backend):
        pytest.skip(f"backend {backend.name!r} takes no {case.dtype}")
    missing = set(case.kernels) - set(backend.kernels)
    if missing and not settings.fallback:
        pytest.skip(f"backend {backend.name!r} does not implement {sorted(missing)}")
    case.run(backend)
