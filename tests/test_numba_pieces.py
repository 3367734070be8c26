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
