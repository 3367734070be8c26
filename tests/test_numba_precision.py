"""The numba backend sums in float64 about a sample of the data, and runs its maps in x's dtype
about the mean rounded to it, the rounding moved into the map's shift (see
backends/normcore_numba/_channel.py and _group.py). These check that move with statistics that
are not float32-exact (float64 ones), and the shifted sums with an outlying sample, on every
layout the plan picks; the conformance kit does not require this of every backend."""

from __future__ import annotations

import numpy as np
import pytest

import normcore

pytest.importorskip("numba")


@pytest.mark.parametrize("layout", ["contiguous", "sliced", "short_rows", "short_rows_n_strided",
                                    "one_per_row", "channels_last"])
def test_backward_float64_statistics_of_float32_data_with_mean_1e4(layout: str) -> None:
    """Every backward reduction path: long rows (contiguous and strided), short rows by strips
    of slab positions (contiguous slabs at any n stride), BatchNorm1d's (N, C) input and
    channels-last rows of C (strips of grouped rows)."""
    rng = np.random.default_rng(7)
    shape = {"short_rows": (64, 3, 40), "short_rows_n_strided": (64, 3, 40),
             "one_per_row": (300, 5, 1)}.get(layout, (4, 3, 4099))
    x = rng.normal(1e4, 1.0, size=shape).astype(np.float32)
    dy = rng.normal(1.0, 1.0, size=shape).astype(np.float32)
    if layout == "sliced":
        x, dy = (np.repeat(a, 2, axis=2)[:, :, ::2] for a in (x, dy))
    if layout == "short_rows_n_strided":
        x, dy = (np.repeat(a, 2, axis=0)[::2] for a in (x, dy))
    if layout == "channels_last":
        x, dy = (np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1) for a in (x, dy))
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
    ref = normcore.get_backend("numpy").channel_normalize_backward(
        dy.astype(np.float64), x64, mean, var, 1e-5, None, True)
    got = normcore.get_backend("numba").channel_normalize_backward(dy, x, mean, var, 1e-5, None, True)
    for name, a, e in zip(("dx", "dweight", "dbias"), got, ref, strict=True):
        err = np.abs(np.asarray(a, np.float64) - e).max() / np.abs(e).max()
        assert err < 1e-4, f"{name}: off by {err:.2e} of its largest entry"


@pytest.mark.parametrize("length", [1, 7, 15, 16, 17, 49, 64, 200, 511, 512])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_c", [(300, 3), (6, 150), (40, 9)])
def test_short_row_statistics_with_an_outlying_shift_sample(length: int, dtype: type,
                                                            n_c: tuple[int, int]) -> None:
    """Per-channel sums about x[0, c, 0] (float64), on (n, c) rows and on (C, L) slabs and rows
    of C channels (the column kernels): with that sample 8 std away from the mean (the worst case
    for shifted sums) and mean 1e4, mean and variance stay within 2e-5 relative of float64.
    Lengths around the vector widths and the slab limit; N = 6 too few slabs for the column
    kernels, L = 1 with C = 150 rows of C channels; contiguous, n-strided and channels-last."""
    rng = np.random.default_rng(length)
    x = rng.normal(1e4, 1.0, size=(*n_c, length)).astype(dtype)
    x[0, :, 0] += 8.0
    # contiguous, rows at a wider n stride, and channels-last (C fastest: rows of C channels)
    xs = [x, np.repeat(x, 2, axis=0)[::2], np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)]
    for arr in xs:
        mean, var = normcore.get_backend("numba").channel_moments(arr)
        x64 = arr.astype(np.float64)
        want_mean, want_var = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
        tol = 2e-5 if dtype == np.float32 else 1e-9  # float64: summation order only
        assert np.all(np.abs(mean - want_mean) <= tol * np.sqrt(want_var) + np.spacing(mean))
        assert np.all(np.abs(var - want_var) <= tol * want_var + np.spacing(var))


@pytest.mark.parametrize("wdtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["rows", "rows_sliced", "groups_flat", "groups"])
def test_group_backward_of_float32_data_with_mean_1e4(layout: str, wdtype: type) -> None:
    """The row-view backward (LayerNorm/RMSNorm rows, GroupNorm rows) with float32 data at mean
    1e4 and float64 statistics: dx and the column sums of dweight/dbias (x's dtype about the mean
    rounded to it, its rounding carried separately, in tiles of four rows) stay within 1e-5 of
    their largest entry. Row counts that are no multiple of the tile, several groups (the g-major
    walk), strided rows and a float64 weight."""
    rng = np.random.default_rng(11)
    shape = {"rows": (21, 1, 300, 1), "rows_sliced": (13, 1, 77, 1),
             "groups_flat": (11, 3, 2, 8), "groups": (5, 2, 3, 40)}[layout]
    x = rng.normal(1e4, 1.0, size=shape).astype(np.float32)
    dy = rng.normal(1.0, 1.0, size=shape).astype(np.float32)
    if layout == "rows_sliced":
        x, dy = (np.repeat(a, 2, axis=2)[:, :, ::2] for a in (x, dy))
    w = rng.normal(1.0, 0.5, size=shape[1:3]).astype(wdtype)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(2, 3)), x64.var(axis=(2, 3))
    ref = normcore.get_backend("numpy").group_normalize_backward(
        dy.astype(np.float64), x64, mean, var, 1e-5, w.astype(np.float64), True)
    got = normcore.get_backend("numba").group_normalize_backward(dy, x, mean, var, 1e-5, w, True)
    for name, a, e in zip(("dx", "dweight", "dbias"), got, ref, strict=True):
        err = np.abs(np.asarray(a, np.float64) - e).max() / np.abs(e).max()
        assert err < 1e-5, f"{name}: off by {err:.2e} of its largest entry"
