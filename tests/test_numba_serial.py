"""Small inputs run on the calling thread, through serial twins of the parallel kernels (see
``normcore_numba._common.SerialKernels``). The suite runs the parallel kernels
(``make test`` sets ``NORMCORE_NUMBA_SERIAL_MAX=0``); here every conformance case runs on the
twins, and every kernel call is made twice, serial and parallel on one thread, whose results
must be equal bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import normcore
from normcore.testing.cases import all_cases, applies

numba = pytest.importorskip("numba")
B = pytest.importorskip("normcore_numba.backend")

CASES = [c for c in all_cases() if not c.big]


def _same(serial, parallel, where: str) -> None:
    if isinstance(serial, tuple):
        assert isinstance(parallel, tuple) and len(serial) == len(parallel), where
        for i, (s, p) in enumerate(zip(serial, parallel, strict=True)):
            _same(s, p, f"{where}[{i}]")
        return
    if serial is None:
        assert parallel is None, where
        return
    s, p = np.asarray(serial), np.asarray(parallel)
    assert s.dtype == p.dtype and s.shape == p.shape, where
    assert s.tobytes() == p.tobytes(), f"{where}: serial and parallel results differ"  # C order


@pytest.fixture(scope="module")
def twinned():
    """The numba backend with each kernel run serial (its result returned) and parallel on one
    thread (its result compared)."""
    be = normcore.get_backend("numba")
    mp = pytest.MonkeyPatch()

    def wrap(name, kernel):
        def both(*args):
            mp.setattr(B, "SERIAL_MAX", 1 << 62)
            serial = kernel(*args)
            mp.setattr(B, "SERIAL_MAX", 0)
            threads = numba.get_num_threads()
            numba.set_num_threads(1)
            try:
                parallel = kernel(*args)
            finally:
                numba.set_num_threads(threads)
            _same(serial, parallel, name)
            return serial
        return both

    for name in be.kernels:
        mp.setattr(be, name, wrap(name, getattr(be, name)), raising=False)
    yield be
    mp.undo()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_serial_twins_conform_and_equal_the_parallel_kernels(twinned, case):
    if not applies(case, twinned):
        pytest.skip(f"not a numba kernel: {case.kernels}")
    case.run(twinned)


def test_small_inputs_take_the_serial_twins(monkeypatch):
    monkeypatch.setattr(B, "SERIAL_MAX", 32768)
    small, threads = B._plan("_group", 32768)
    assert threads == 1 and isinstance(small, B._kernels("_common").SerialKernels)
    big, threads = B._plan("_group", 32769)
    assert big is B._kernels("_group") and threads == numba.get_num_threads()
    # a twin is its own dispatcher (own cache entries), compiled without parallel
    twin = small.fwd3
    assert twin is not big.fwd3 and twin.py_func.__qualname__ == "fwd3_serial"
    assert "parallel" not in twin.targetoptions and "parallel" in big.fwd3.targetoptions
    assert B._plan("_channel", 8)[0].FOLD == B._kernels("_channel").FOLD  # the rest passes


def test_the_threshold_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("NORMCORE_NUMBA_SERIAL_MAX", "0")
    assert B._serial_max() == 0
    monkeypatch.setenv("NORMCORE_NUMBA_SERIAL_MAX", "1000")
    assert B._serial_max() == 1000
    monkeypatch.delenv("NORMCORE_NUMBA_SERIAL_MAX")
    assert B._serial_max() == 32768
    monkeypatch.setenv("NORMCORE_NUMBA_SERIAL_MAX", "lots")
    with pytest.warns(UserWarning, match="NORMCORE_NUMBA_SERIAL_MAX='lots'"):
        assert B._serial_max() == 32768


def test_kernels_keep_their_parallel_options_after_compiling(monkeypatch):
    """numba pops the keys out of a dict of parallel options at every compile: the kernels share
    an options object instead, so every compile, not just the process's first, runs the prange
    pass alone (and the serial twins still recognise the parallel kernels)."""
    monkeypatch.setattr(B, "SERIAL_MAX", 0)
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 5))
    B.NumbaBackend().group_normalize(x, None, None, 1e-5, True)  # compiles, or loads, fwd4
    options = B._kernels("_common").KERNEL["parallel"]
    assert options.prange and not (options.numpy or options.reduction or options.fusion)
    assert "parallel" in B._kernels("_group").fwd4.targetoptions
    monkeypatch.setattr(B, "SERIAL_MAX", 1 << 40)
    assert B._plan("_group", 1)[0].fwd4.py_func.__qualname__ == "fwd4_serial"
