"""The numba backend's recycled output buffers: a buffer is handed out again only when nothing
outside the pool can reach it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import normcore

pool_module = pytest.importorskip("normcore_numba._pool")
Pool = pool_module.Pool
SHAPE = (512, 1024)  # 2 MiB of float32: above MIN_BYTES


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_dropped_output_is_reused_and_aligned():
    pool = Pool(1 << 30)
    a = pool.empty(SHAPE, np.float32)
    assert a.shape == SHAPE and a.dtype == np.float32 and a.flags.c_contiguous
    assert _addr(a) % 64 == 0
    where = _addr(a)
    del a
    b = pool.empty(SHAPE, np.float32)
    assert _addr(b) == where
    assert pool.pooled_bytes == b.nbytes


@pytest.mark.parametrize("offset", [0, 4, 16, 48, 60])
def test_output_starts_at_the_inputs_offset_within_a_line(offset):
    """like=x: the output starts at x's offset within a 64-byte line, whichever buffer it gets
    (a new one, or a recycled one that was handed out at another offset before)."""
    pool = Pool(1 << 30)
    raw = np.empty(SHAPE[0] * SHAPE[1] * 4 + 128, np.uint8)
    start = (offset - _addr(raw)) % 64
    x = raw[start:start + SHAPE[0] * SHAPE[1] * 4].view(np.float32).reshape(SHAPE)
    assert _addr(x) % 64 == offset
    a = pool.empty(SHAPE, np.float32, like=x)
    assert _addr(a) % 64 == offset and a.shape == SHAPE and a.flags.c_contiguous
    a[...] = 3.0  # the whole view lies inside the buffer
    del a
    b = pool.empty(SHAPE, np.float32, like=x[:, 1:])  # 4 bytes further
    assert _addr(b) % 64 == (offset + 4) % 64
    assert pool.pooled_bytes == b.nbytes  # the same buffer again
    del b
    c = pool.empty(SHAPE, np.float64, like=x[:, 1:])  # not a multiple of 8: aligned instead
    assert _addr(c) % 64 == (0 if (offset + 4) % 8 else (offset + 4) % 64)


@pytest.mark.parametrize("keep", [
    lambda a: a.T[3:],  # a view of a view
    memoryview,  # a buffer export
    lambda a: np.frombuffer(a, dtype=np.uint8),
    lambda a: a.reshape(-1)[::7],
])
def test_buffer_reachable_from_a_live_object_is_not_reused(keep):
    pool = Pool(1 << 30)
    a = pool.empty(SHAPE, np.float32)
    a[...] = 1.0
    held = keep(a)
    before = np.array(np.asarray(held), copy=True)
    where = _addr(a)
    del a
    b = pool.empty(SHAPE, np.float32)
    assert _addr(b) != where
    b[...] = 2.0
    np.testing.assert_array_equal(np.asarray(held), before)
    del held
    c = pool.empty(SHAPE, np.float32)
    assert _addr(c) == where


def test_other_sizes_and_small_arrays_are_separate():
    pool = Pool(1 << 30)
    small = pool.empty((8, 8), np.float32)
    assert pool.pooled_bytes == 0 and small.shape == (8, 8)
    a = pool.empty(SHAPE, np.float32)
    b = pool.empty(SHAPE, np.float64)
    assert not np.shares_memory(a, b)
    assert pool.pooled_bytes == a.nbytes + b.nbytes


def test_empty_like_is_c_contiguous_and_pools_only_large_outputs():
    pool = Pool(1 << 30)
    big = np.zeros(SHAPE[::-1], np.float32).T  # Fortran order: the output is C order anyway
    a = pool.empty_like(big)
    assert a.shape == SHAPE and a.dtype == np.float32 and a.flags.c_contiguous
    assert pool.pooled_bytes == a.nbytes and a.base is not None
    small = pool.empty_like(np.zeros((8, 8), np.float64)[:, ::2])
    assert small.shape == (8, 4) and small.dtype == np.float64 and small.flags.c_contiguous
    assert small.base is None and pool.pooled_bytes == a.nbytes


def test_limit_evicts_idle_buffers_and_never_exceeds():
    nbytes = int(np.prod(SHAPE)) * 4
    pool = Pool(2 * nbytes)
    a = pool.empty(SHAPE, np.float32)
    b = pool.empty(SHAPE, np.float32)
    c = pool.empty(SHAPE, np.float32)  # over the limit: a plain array, not pooled
    assert pool.pooled_bytes == 2 * nbytes
    assert not np.shares_memory(c, a) and not np.shares_memory(c, b)
    del a, b
    d = pool.empty((2 * SHAPE[0], SHAPE[1]), np.float32)  # evicts both idle buffers
    assert pool.pooled_bytes == 2 * nbytes == d.nbytes
    del c, d
    assert pool.empty_cache() == 2 * nbytes
    assert pool.pooled_bytes == 0


def test_zero_limit_disables():
    pool = Pool(0)
    a = pool.empty(SHAPE, np.float32)
    assert a.base is None and pool.pooled_bytes == 0


def test_layer_outputs_kept_by_the_caller_stay_intact(rng):
    if "numba" not in {b.name for b in normcore.list_backends(check=True) if b.available}:
        pytest.skip("numba backend not available")
    x1 = rng.standard_normal((1024, 512)).astype(np.float32)
    x2 = rng.standard_normal((1024, 512)).astype(np.float32)
    ln = normcore.LayerNorm(512, backend="numba")
    ref = normcore.LayerNorm(512, backend="numpy")
    y1 = ln(x1)
    y2 = ln(x2)  # y1 is still held: y2 must not overwrite it
    np.testing.assert_allclose(y1, ref(x1), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(y2, ref(x2), rtol=2e-4, atol=2e-5)
    dx = ln.backward(np.ones_like(x2))
    assert not np.shares_memory(dx, y2) and not np.shares_memory(dx, y1)


def test_environment_variable_sets_the_limit():
    code = ("import numpy as np; from normcore_numba import _pool; "
            "print(_pool.POOL.limit, _pool.POOL.empty((512, 1024), np.float32).base is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "NORMCORE_NUMBA_POOL_MB": "0"})
    assert out.stdout.split() == ["0", "True"]


def test_empty_cache_releases_a_dropped_layer_output(rng):
    if "numba" not in {b.name for b in normcore.list_backends(check=True) if b.available}:
        pytest.skip("numba backend not available")
    import normcore_numba

    normcore_numba.empty_cache()
    x = rng.standard_normal((1024, 512)).astype(np.float32)
    y = normcore.LayerNorm(512, backend="numba")(x)
    held = pool_module.POOL.pooled_bytes
    assert held >= y.nbytes
    assert normcore_numba.empty_cache() == 0  # y is alive: nothing idle to release
    del y
    assert normcore_numba.empty_cache() >= x.nbytes
    assert pool_module.POOL.pooled_bytes <= held - x.nbytes
