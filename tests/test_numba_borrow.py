"""The numba kernels borrow their array arguments (``_common.borrow``): the views they make of
them count no references. Borrowing must not change what a kernel computes, must leave the
callers' arrays' reference counts as they were, and must not leak or free numba-managed memory
(every allocation a kernel makes is released once its results are dropped)."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

import normcore

numba = pytest.importorskip("numba")
B = pytest.importorskip("normcore_numba.backend")
C = pytest.importorskip("normcore_numba._common")
runtime = pytest.importorskip("numba.core.runtime")
rtsys, _nrt = runtime.rtsys, runtime._nrt_python


@pytest.fixture(autouse=True)
def _nrt_stats():
    """numba counts its allocations only when asked (NUMBA_NRT_STATS, or this switch)."""
    was = _nrt.memsys_stats_enabled()
    _nrt.memsys_enable_stats()
    yield
    if not was:
        _nrt.memsys_disable_stats()


@numba.njit(cache=False)
def _row_sums(x):
    x = C.borrow(x)
    out = np.empty(x.shape[0])
    for r in range(x.shape[0]):
        row = x[r]  # a view of a borrowed array
        out[r] = row.sum()
    return out


@numba.njit(cache=False)
def _pair(x, scale, y):
    x, scale, y = C.borrow((x, scale, y))  # a value that is not an array passes through
    for i in range(x.shape[0]):
        y[i] = x[i] * scale


def test_borrowed_views_compute_what_owned_ones_do():
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(_row_sums(x), x.sum(axis=1))
    y = np.empty(4)
    _pair(x[1], 2.0, y)
    np.testing.assert_array_equal(y, 2.0 * x[1])


def test_borrowing_leaves_reference_counts_and_numba_memory_balanced():
    x = np.arange(12.0).reshape(3, 4)
    _row_sums(x)  # compile
    before = sys.getrefcount(x)
    stats0 = rtsys.get_allocation_stats()
    for _ in range(10):
        _row_sums(x)
    gc.collect()
    stats1 = rtsys.get_allocation_stats()
    assert sys.getrefcount(x) == before
    assert stats1.alloc - stats0.alloc == stats1.free - stats0.free  # each result freed
    assert stats1.mi_alloc - stats0.mi_alloc == stats1.mi_free - stats0.mi_free


@pytest.mark.parametrize("serial_max", [0, 1 << 30], ids=["parallel", "serial-twins"])
def test_layers_on_borrowed_kernels_balance_numba_memory(monkeypatch, serial_max):
    """Forward and backward of layers whose kernels borrow their arrays: every allocation
    their kernels make (statistics, partial sums) is released once the layer drops it."""
    monkeypatch.setattr(B, "SERIAL_MAX", serial_max)
    rng = np.random.default_rng(0)
    layers = [(normcore.LayerNorm(64, backend="numba"), (32, 64)),
              (normcore.GroupNorm(4, 16, backend="numba"), (4, 16, 9)),
              (normcore.BatchNorm2d(8, backend="numba"), (4, 8, 5, 5))]

    def step():
        for layer, shape in layers:
            layer(rng.standard_normal(shape).astype(np.float32))
            layer.backward(np.ones(shape, np.float32))

    step()  # compile, and the layers now hold one set of saved statistics
    gc.collect()
    stats0 = rtsys.get_allocation_stats()
    for _ in range(3):
        step()  # each call's saved statistics replace the last ones
    gc.collect()
    stats1 = rtsys.get_allocation_stats()
    assert stats1.mi_alloc - stats0.mi_alloc == stats1.mi_free - stats0.mi_free
