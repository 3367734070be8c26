"""The numba backend's float32 lanes (see backends/normcore_numba/_simd.py) sum about a shift
rounded to float32; sums about a float64 mean are moved back onto it. These check that move with
statistics that are not float32-exact (float64 ones), which the conformance kit does not require
of every backend."""

from __future__ import annotations

import numpy as np
import pytest

import normcore

pytest.importorskip("numba")


@pytest.mark.parametrize("layout", ["contiguous", "sliced", "short_rows"])
def test_backward_float64_statistics_of_float32_data_with_mean_1e4(layout: str) -> None:
    rng = np.random.default_rng(7)
    shape = (64, 3, 40) if layout == "short_rows" else (4, 3, 4099)
    x = rng.normal(1e4, 1.0, size=shape).astype(np.float32)
    dy = rng.normal(1.0, 1.0, size=shape).astype(np.float32)
    if layout == "sliced":
        x, dy = (np.repeat(a, 2, axis=2)[:, :, ::2] for a in (x, dy))
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
    ref = normcore.get_backend("numpy").channel_normalize_backward(
        dy.astype(np.float64), x64, mean, var, 1e-5, None, True)
    got = normcore.get_backend("numba").channel_normalize_backward(dy, x, mean, var, 1e-5, None, True)
    for name, a, e in zip(("dx", "dweight", "dbias"), got, ref, strict=True):
        err = np.abs(np.asarray(a, np.float64) - e).max() / np.abs(e).max()
        assert err < 1e-4, f"{name}: off by {err:.2e} of its largest entry"
