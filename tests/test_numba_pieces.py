"""The numba backend cuts few long BatchNorm rows into pieces for its element-wise passes by
viewing (N, C, L) as (N, C * k, L / k) with the per-channel values repeated; when the view
does not exist (L prime, or C's stride not L times L's) rows stay whole. Either way the result
is the reference's."""

from __future__ import annotations

import numpy as np
import pytest

import normcore

pytest.importorskip("numba")
B = pytest.importorskip("normcore_numba.backend")


@pytest.fixture(autouse=True)
def _parallel_kernels(monkeypatch):
    """These tests compare the backend with its parallel kernels called directly: small inputs
    must not take the serial twins (tests/test_numba_serial.py covers those)."""
    monkeypatch.setattr(B, "SERIAL_MAX", 0)


def test_row_pieces_are_divisors_of_l_and_need_the_view():
    x = np.empty((1, 3, 50176), np.float32)
    k = B._row_pieces(2, x)
    assert k > 1 and 50176 % k == 0
    assert B._row_pieces(2, np.empty((1, 1, 4099), np.float32)) == 1  # prime L
    assert B._row_pieces(2, np.empty((64, 64, 64), np.float32)) == 1  # rows enough already
    wide = np.empty((1, 6, 1000), np.float32)[:, ::2, :]  # C's stride is 2 L
    assert B._row_pieces(2, wide) == 1
    assert B._row_pieces(2, x, wide[:, :, :]) == 1  # every array must allow the view


@pytest.mark.parametrize("shape, sl", [
    ((1, 3, 1000), np.s_[:]),
    ((2, 1, 999), np.s_[:]),
    ((1, 6, 1000), np.s_[:, ::2, :]),
    ((1, 2, 4099), np.s_[:]),
    ((1, 3, 2000), np.s_[:, :, ::2]),
])
def test_cut_rows_match_the_reference(shape, sl):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)[sl]
    dy = rng.standard_normal(x.shape)
    c = x.shape[1]
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    nb, ref = B.NumbaBackend(), normcore.get_backend("numpy")
    mean, var = ref.channel_moments(x)
    np.testing.assert_allclose(nb.channel_normalize(x, mean, var, 1e-5, w, b),
                               ref.channel_normalize(x, mean, var, 1e-5, w, b), rtol=1e-12,
                               atol=1e-12)
    got = nb.channel_normalize_backward(dy, x, mean, var, 1e-5, w, True)
    want = ref.channel_normalize_backward(dy, x, mean, var, 1e-5, w, True)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)


def test_inline_allocation_helpers():
    """empty/cast/nonneg stand in for numba's np.empty, astype and max (compile time): the same
    shapes, strides, dtypes and NaN handling."""
    from numba import njit

    from normcore_numba._common import cast, empty, nonneg

    @njit
    def build(n, like):
        a = empty((n, 3, 2), np.float64)
        b = empty(n, like.dtype)
        for i in range(n):
            b[i] = i + 0.5
            for j in range(3):
                for k in range(2):
                    a[i, j, k] = i * 100 + j * 10 + k
        return a, b, cast(b, np.float64), nonneg(-1.0), nonneg(2.0), nonneg(np.nan)

    a, b, c, neg, pos, nan = build(4, np.zeros(1, np.float32))
    assert a.shape == (4, 3, 2) and a.strides == (48, 16, 8) and a.flags.c_contiguous
    assert np.array_equal(a, np.arange(4)[:, None, None] * 100 + np.arange(3)[:, None] * 10
                          + np.arange(2))
    assert b.dtype == np.float32 and c.dtype == np.float64
    assert np.array_equal(c, np.arange(4) + 0.5)
    assert (neg, pos) == (0.0, 2.0) and np.isnan(nan)


@pytest.mark.parametrize("shape", [(256, 64, 8, 8), (64, 8, 4, 4), (8, 3, 40, 40), (300, 7), (8, 16),
                                   (3, 40)])
def test_fused_running_update_matches_the_separate_kernel(shape):
    """BatchNorm's training forward through channel_moments_normalize_update gives the running
    statistics running_update gives from the returned batch statistics, bit for bit."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32) * 3 + 1
    be = B.NumbaBackend()
    c = shape[1]
    x3 = x.reshape(shape[0], c, -1)
    rm = rng.standard_normal(c).astype(np.float32)
    rv = rng.random(c).astype(np.float32) + 0.5
    corr = x3.shape[0] * x3.shape[2] / (x3.shape[0] * x3.shape[2] - 1)
    y, mean, var, new_m, new_v = be.channel_moments_normalize_update(x3, 1e-5, None, None, rm,
                                                                     rv, 0.1, corr)
    want_m, want_v = be.running_update(rm, rv, mean.reshape(1, c), var.reshape(1, c), 0.1, corr)
    assert new_m.dtype == rm.dtype and new_v.dtype == rv.dtype
    assert np.array_equal(new_m, want_m) and np.array_equal(new_v, want_v)
    y2, mean2, var2 = be.channel_moments_normalize(x3, 1e-5, None, None)
    assert np.array_equal(y, y2) and np.array_equal(mean, mean2) and np.array_equal(var, var2)


@pytest.mark.parametrize("shape", [(256, 64, 8, 8), (8, 3, 20, 20), (2, 4, 2, 2), (3, 5, 7)])
@pytest.mark.parametrize("batch_stats", [True, False])
def test_fused_backward_matches_the_two_pass_kernels(shape, batch_stats, monkeypatch):
    """BatchNorm's backward on cache-sized rows runs in one kernel (bwd_ncl_rows): the same
    gradients as its reduce and apply kernels, bit for bit."""
    rng = np.random.default_rng(2)
    x3 = (rng.standard_normal(shape).astype(np.float32) * 2 + 1).reshape(shape[0], shape[1], -1)
    dy3 = rng.standard_normal(x3.shape).astype(np.float32)
    c = x3.shape[1]
    mean = x3.mean(axis=(0, 2)).astype(np.float32)
    var = x3.var(axis=(0, 2)).astype(np.float32)
    w = rng.standard_normal(c).astype(np.float32)
    k = B._kernels("_channel")
    with monkeypatch.context() as m:  # the fused kernel only
        for name in ("bwd_reduce_ncl_rows", "bwd_apply_ncl"):
            m.setattr(k, name, None)
        dx, dw, db = B.NumbaBackend().channel_normalize_backward(dy3, x3, mean, var, 1e-5, w,
                                                                 batch_stats)
    mu = mean.astype(np.float64)
    nblk = B._blocks(x3.shape[0] * c, B._num_threads())
    want_db, want_dw, a, k2, k3, _ = k.bwd_reduce_ncl_rows(dy3, x3, mu, var, 1e-5, w, batch_stats,
                                                        nblk)
    want_dx = np.empty_like(x3)
    k.bwd_apply_ncl(dy3, x3, mu, a, k2, k3, want_dx, nblk)
    assert np.array_equal(dx, want_dx)
    assert np.array_equal(dw, want_dw.astype(np.float32))
    assert np.array_equal(db, want_db.astype(np.float32))


@pytest.mark.parametrize("shape,nhwc", [((8, 16), False), ((3, 40), False), ((2, 3, 4, 4), True)])
@pytest.mark.parametrize("batch_stats", [True, False])
def test_fused_channels_last_backward_matches_the_two_pass_kernels(shape, nhwc, batch_stats,
                                                                   monkeypatch):
    """BatchNorm's backward on channels-last input with few rows runs in one kernel (bwd_nlc):
    the same gradients as its reduce and apply kernels, bit for bit."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32) * 2 + 1
    dy = rng.standard_normal(shape).astype(np.float32)
    if nhwc:  # NCHW shape, channels-last strides
        x, dy = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
                 for a in (x, dy))
    x3, dy3 = (a.reshape(shape[0], shape[1], -1) for a in (x, dy))
    c = shape[1]
    mean = x3.mean(axis=(0, 2)).astype(np.float32)
    var = x3.var(axis=(0, 2)).astype(np.float32)
    w = rng.standard_normal(c).astype(np.float32)
    k = B._kernels("_channel")
    with monkeypatch.context() as m:  # the fused kernel only
        for name in ("bwd_reduce_nlc", "bwd_apply_nlc", "bwd_apply_periodic"):
            m.setattr(k, name, None)
        dx, dw, db = B.NumbaBackend().channel_normalize_backward(dy3, x3, mean, var, 1e-5, w,
                                                                 batch_stats)
    xt, dyt = x3.transpose(0, 2, 1), dy3.transpose(0, 2, 1)
    mu = mean.astype(np.float64)
    nblk = B._blocks(xt.shape[0] * xt.shape[1], B._num_threads())
    pb, pw = B._partials(nblk, c)
    want_db, want_dw, a, k2, k3, _ = k.bwd_reduce_nlc(dyt, xt, mu, var, 1e-5, w, batch_stats, pb, pw)
    want_dx = np.empty(xt.shape, np.float32)
    k.bwd_apply_nlc(dyt, xt, mu, a, k2, k3, want_dx, nblk)
    assert dx.transpose(0, 2, 1).flags.c_contiguous  # channels-last out for channels-last in
    assert np.array_equal(dx, want_dx.transpose(0, 2, 1))
    assert np.array_equal(dw, want_dw.astype(np.float32))
    assert np.array_equal(db, want_db.astype(np.float32))
