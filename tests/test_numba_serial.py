"""Every numba kernel is one Python function compiled twice (``normcore_numba._jit``): a serial
variant, which small inputs run on the calling thread, and a parallel one. The suite runs the
parallel kernels (``make test`` sets ``NORMCORE_NUMBA_SERIAL_MAX=0``); here every conformance
case runs each kernel call both ways with the same blocks, and the two must agree bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import normcore
from normcore.testing.cases import all_cases, applies

numba = pytest.importorskip("numba")
B = pytest.importorskip("normcore_numba.backend")
from normcore_numba import _jit, _plan  # noqa: E402

CASES = [c for c in all_cases() if not c.big]


def _same(serial, parallel, where: str) -> None:
    if isinstance(serial, tuple):
        assert isinstance(parallel, tuple) and len(serial) == len(parallel), where
        for i, (s, p) in enumerate(zip(serial, parallel, strict=True)):
            _same(s, p, f"{where}[{i}]")
        return
    s, p = np.asarray(serial), np.asarray(parallel)
    assert s.dtype == p.dtype and s.shape == p.shape, where
    assert s.tobytes() == p.tobytes(), f"{where}: serial and parallel results differ"


@pytest.fixture(scope="module")
def twinned():
    """Kernels planned for numba's threads, each call run by the serial variant on copies of the
    arrays it writes, then by the parallel variant; results and written arrays compared."""
    mp = pytest.MonkeyPatch()
    mp.setattr(_plan, "SERIAL_MAX", 0)

    def run(self, nblk, *args):
        # outputs and partials are C-contiguous: copies of the same layout (same machine code)
        copies = [a.copy() if isinstance(a, np.ndarray) and a.flags.c_contiguous else a
                  for a in args]
        serial = self.serial(nblk, *copies)
        parallel = self.parallel(nblk, *args)
        name = self.__name__
        if serial is not None:
            _same(serial, parallel, name)
        for i, (c, a) in enumerate(zip(copies, args, strict=True)):
            if c is not a:
                _same(c, a, f"{name} argument {i}")
        return parallel

    mp.setattr(_jit.Kernel, "run", run)
    yield normcore.get_backend("numba")
    mp.undo()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_serial_and_parallel_variants_conform_and_agree(twinned, case):
    if not applies(case, twinned):
        pytest.skip(f"not a numba kernel: {case.kernels}")
    case.run(twinned)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_small_input_kernels_conform(monkeypatch, case):
    """Inputs of at most SERIAL_MAX elements take the kernels that compile fastest (channel by
    channel for BatchNorm, one row at a time for the flat backward, see ``_plan``); the suite
    runs with SERIAL_MAX=0, so here every conformance case runs with all inputs small."""
    monkeypatch.setattr(_plan, "SERIAL_MAX", 1 << 40)
    be = normcore.get_backend("numba")
    if not applies(case, be):
        pytest.skip(f"not a numba kernel: {case.kernels}")
    case.run(be)


@pytest.mark.parametrize("size", [100, 10_000, 1_000_000])
def test_results_do_not_depend_on_the_size_threshold_where_elements_are_independent(
        monkeypatch, size):
    """Dropout and standardization cut their blocks by the thread count (one block for small
    inputs); their results do not depend on it (elements and rows are independent)."""
    be = normcore.get_backend("numba")
    x = np.random.default_rng(1).standard_normal((size // 100, 100)).astype(np.float32)
    out = {}
    for limit in (0, 1 << 40):
        monkeypatch.setattr(_plan, "SERIAL_MAX", limit)
        out[limit] = (be.dropout(x, 0.3, 7), *be.standardize_rows(x, 1e-5, 0, True))
    for a, b in zip(out[0], out[1 << 40], strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
