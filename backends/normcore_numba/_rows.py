"""Row-view kernels (weight standardization): x2 of shape (R, K), statistics per row.

Bandwidth accounting per element (s = itemsize): forward reads x twice (mean, then centered
sum of squares: an exact two-pass like the reference; the second read hits cache for the small
rows of a weight tensor) and writes y -> 2s in DRAM terms; backward reads x, dy for the row sums
and again for dx, writes dx -> 3s. Rows are independent (no cross-row reduction): one block per thread
over blocks of rows (``_blocks.parallel_blocks``), deterministic.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit

from ._blocks import parallel_blocks
from ._common import HELPER, all_set, borrow, dot2_centered, empty, finite, sample_shift, sums_shifted

#: The fingerprint of the package's compiled code (see _fingerprint): in this file, so
#: that numba's disk cache drops these kernels whenever any of that code changes.
CODE_SHA256 = "6adc431478b936b911208132f5a59a11b8b1334d36670d322a76640b09a89b74"


@njit(inline="always", **HELPER)
def _standardize_body(b, a):
    x, eps, ddof, eps_in_root, y, mean, denom, nblk, ok = a
    r_, k_ = x.shape
    n = k_ - ddof
    fin = True
    for r in range(b * r_ // nblk, (b + 1) * r_ // nblk):
        xr = x[r]
        k = sample_shift(xr[0])  # a constant row's mean is then exactly its value
        s1, _ = sums_shifted(xr, k)
        mu = k + s1 / k_
        _, q = sums_shifted(xr, mu)
        fin = fin and finite(mu, q)
        v = q / n
        dn = math.sqrt(v + eps) if eps_in_root else math.sqrt(v) + eps
        mean[r] = mu
        denom[r] = dn
        inv = 1.0 / dn
        yr = y[r]
        for i in range(k_):
            yr[i] = (numba.float64(xr[i]) - mu) * inv
    ok[b] = fin


@njit(**HELPER)
def standardize(x, eps, ddof, eps_in_root, y, nblk):
    """Returns (mean, denom, whether every statistic is finite: see _common.finite)."""
    x, y = borrow((x, y))
    r_ = x.shape[0]
    mean = empty(r_, np.float64)
    denom = empty(r_, np.float64)
    ok = empty(nblk, np.uint8)
    parallel_blocks(_standardize_body, nblk, (x, eps, ddof, eps_in_root, y, mean, denom, nblk, ok))
    return mean, denom, all_set(ok)


@njit(inline="always", **HELPER)
def _standardize_backward_body(b, a):
    dy, x, mean, denom, ddof, eps_in_root, dx, nblk, ok = a
    r_, k_ = x.shape
    n = k_ - ddof
    fin = True
    for r in range(b * r_ // nblk, (b + 1) * r_ // nblk):
        xr = x[r]
        dyr = dy[r]
        mu = numba.float64(mean[r])
        d = numba.float64(denom[r])
        sdy, s = dot2_centered(dyr, xr, mu)
        fin = fin and finite(sdy, s)
        if eps_in_root:
            coef = s / (n * d * d * d)
        else:
            _, q = sums_shifted(xr, mu)
            fin = fin and finite(q, 0.0)
            root = math.sqrt(q / n)
            coef = s / (n * root * d * d) if root > 0 else 0.0
        mdy = sdy / k_
        dxr = dx[r]
        for i in range(k_):
            dxr[i] = (numba.float64(dyr[i]) - mdy) / d - (numba.float64(xr[i]) - mu) * coef
    ok[b] = fin


@njit(**HELPER)
def standardize_backward(dy, x, mean, denom, ddof, eps_in_root, dx, nblk):
    """dx into dx; returns whether every row's sums are finite."""
    dy, x, dx = borrow((dy, x, dx))
    ok = empty(nblk, np.uint8)
    parallel_blocks(_standardize_backward_body, nblk, (dy, x, mean, denom, ddof, eps_in_root, dx,
                                                       nblk, ok))
    return all_set(ok)
