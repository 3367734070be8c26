"""The periodic maps' line-aligned rows (backends/normcore_numba/backend.py ``_line_rows``): a
contiguous (G, Q) pair at one offset within a 64-byte line is mapped as G - 1 rows starting h
elements in, with parameter rows rotated by h, plus a head and a tail. Every element must get
the very bits of the plain row walk, at every offset, for every block split."""

from __future__ import annotations

import numpy as np
import pytest

import normcore

pytest.importorskip("numba")
B = pytest.importorskip("normcore_numba.backend")


def _at(n: int, dtype: type, offset: int) -> np.ndarray:
    """n elements starting ``offset`` bytes into a 64-byte line."""
    item = np.dtype(dtype).itemsize
    raw = np.empty(n * item + 128, np.uint8)
    start = (offset - raw.ctypes.data) % 64
    return raw[start:start + n * item].view(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("c", "inner"), [(16, 1), (3, 16), (8, 4)])
def test_line_rows_give_the_bits_of_the_row_walk(dtype, c, inner):
    k, _ = B._plan("_channel", 1 << 30)  # the parallel kernels
    item = np.dtype(dtype).itemsize
    q = int(np.lcm(c * inner, 64 // item))  # whole periods and whole lines per row
    rng = np.random.default_rng(5)
    mean = rng.normal(size=c).astype(dtype)
    var = rng.uniform(0.5, 2.0, size=c).astype(dtype)
    w, b = rng.normal(size=c).astype(dtype), rng.normal(size=c).astype(dtype)
    for g in (2, 5):
        for offset in range(0, 64, item):
            x2 = _at(g * q, dtype, offset).reshape(g, q)
            x2[...] = rng.normal(3.0, 2.0, size=(g, q))
            want = np.empty((g, q), dtype)
            none = B._NONE[np.dtype(dtype)]
            k.affine_periodic(x2, (none,) * 4, mean, var, 1e-5, w, b, inner, want, 1)
            for nblk in (1, 2, 3):
                y2 = _at(g * q, dtype, offset).reshape(g, q)
                xr, yr, ends = B._line_rows(x2, y2, min_bytes=0)
                assert ends[0].size == (64 - offset) % 64 // item
                if offset:
                    assert xr.ctypes.data % 64 == 0 and yr.ctypes.data % 64 == 0
                k.affine_periodic(xr, ends, mean, var, 1e-5, w, b, inner, yr, nblk)
                np.testing.assert_array_equal(y2, want, err_msg=f"offset {offset}, {nblk} blocks")


def test_batchnorm1d_on_pooled_rows_matches_the_reference(monkeypatch):
    """A BatchNorm1d large enough for the output pool (placed at x's offset, so the rows are
    rotated) gives the reference's output and statistics, training and evaluation."""
    heads = []
    line_rows = B._line_rows

    def spy(x2, y2):
        out = line_rows(x2, y2)
        heads.append(out[2][0].size)
        return out

    monkeypatch.setattr(B, "_line_rows", spy)
    rng = np.random.default_rng(6)
    raw = rng.normal(1.0, 2.0, size=(4096 * 128 + 3,)).astype(np.float32)
    x = raw[3:].reshape(4096, 128)  # 12 bytes past NumPy's own offset
    out = {}
    for name in ("numba", "numpy"):
        layer = normcore.BatchNorm1d(128, backend=name)
        y = layer(x)
        layer.eval()
        out[name] = (np.array(y), layer.running_mean.copy(), layer.running_var.copy(),
                     np.array(layer(x)))
    for got, want in zip(out["numba"], out["numpy"], strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert len(heads) == 2 and all(h > 0 for h in heads), heads  # both maps took rotated rows
