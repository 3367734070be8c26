"""Small inputs run on the calling thread, as one block with no parallel region (see
``normcore_numba._blocks``). The suite runs the kernels on numba's threads (``make test`` sets
``NORMCORE_NUMBA_SERIAL_MAX=0``); here every conformance case runs the small-input way, and
every kernel call is made twice, small-input and parallel with one thread, whose results must be
equal bit for bit."""

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
def test_small_input_path_conforms_and_equals_the_parallel_one(twinned, case):
    if not applies(case, twinned):
        pytest.skip(f"not a numba kernel: {case.kernels}")
    case.run(twinned)


def test_small_inputs_run_one_block_on_the_calling_thread(monkeypatch):
    monkeypatch.setattr(B, "SERIAL_MAX", 32768)
    small, threads = B._plan("_group", 32768)
    assert small is B._kernels("_group") and threads == 1
    big, threads = B._plan("_group", 32769)
    assert big is B._kernels("_group") and threads == numba.get_num_threads()


@pytest.mark.parametrize("size", [100, 10_000, 1_000_000])
def test_dropout_and_standardization_take_the_threads_they_are_given(monkeypatch, size):
    """Their blocks are cut by the thread count now (one block for small inputs): results do
    not depend on it (elements and rows are independent)."""
    be = normcore.get_backend("numba")
    x = np.random.default_rng(1).standard_normal((size // 100, 100)).astype(np.float32)
    out = {}
    for limit in (0, 1 << 40):
        monkeypatch.setattr(B, "SERIAL_MAX", limit)
        out[limit] = (be.dropout(x, 0.3, 7), *be.standardize_rows(x, 1e-5, 0, True))
    for a, b in zip(out[0], out[1 << 40], strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


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


def test_the_parallel_kernel_keeps_its_options_after_compiling(monkeypatch):
    """numba pops the keys out of a dict of parallel options at every compile: the options are
    an object instead, so every compile, not just the process's first, runs the prange pass
    alone. The layer kernels are not parallel themselves: their blocks run through one."""
    monkeypatch.setattr(B, "SERIAL_MAX", 0)
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 5))
    B.NumbaBackend().group_normalize(x, None, None, 1e-5, True)  # compiles, or loads, fwd4
    options = B._kernels("_common").KERNEL["parallel"]
    assert options.prange and not (options.numpy or options.reduction or options.fusion)
    assert "parallel" in B._kernels("_blocks")._run_blocks.targetoptions
    assert "parallel" not in B._kernels("_group").fwd4.targetoptions
