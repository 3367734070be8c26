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
from ._common import HELPER, borrow, dot2_centered, empty, sums_shifted

#: The fingerprint of the package's compiled code (see _fingerprint): in this file, so
#: that numba's disk cache drops these kernels whenever any of that code changes.
CODE_SHA256 = "1ea4d2d0eab26425daf45d856cfe6e8f25ae6fcd978754a70f060b36aa707b57"


@njit(inline="always", **HELPER)
def _standardize_body(b, a):
    x, eps, ddof, eps_in_root, y, mean, denom, nblk = a
    r_, k_ = x.shape
    n = k_ - ddof
    for r in range(b * r_ // nblk, (b + 1) * r_ // nblk):
        xr = x[r]
        s1, _ = sums_shifted(xr, 0.0)
        mu = s1 / k_
        _, q = sums_shifted(xr, mu)
        v = q / n
        dn = math.sqrt(v + eps) if eps_in_root else math.sqrt(v) + eps
        mean[r] = mu
        denom[r] = dn
        inv = 1.0 / dn
        yr = y[r]
        for i in range(k_):
            yr[i] = (numba.float64(xr[i]) - mu) * inv


@njit(**HELPER)
def standardize(x, eps, ddof, eps_in_root, y, nblk):
    x, y = borrow((x, y))
    r_ = x.shape[0]
    mean = empty(r_, np.float64)
    denom = empty(r_, np.float64)
    parallel_blocks(_standardize_body, nblk, (x, eps, ddof, eps_in_root, y, mean, denom, nblk))
    return mean, denom


@njit(inline="always", **HELPER)
def _standardize_backward_body(b, a):
    dy, x, mean, denom, ddof, eps_in_root, dx, nblk = a
    r_, k_ = x.shape
    n = k_ - ddof
    for r in range(b * r_ // nblk, (b + 1) * r_ // nblk):
        xr = x[r]
        dyr = dy[r]
        mu = numba.float64(mean[r])
        d = numba.float64(denom[r])
        sdy, s = dot2_centered(dyr, xr, mu)
        if eps_in_root:
            coef = s / (n * d * d * d)
        else:
            _, q = sums_shifted(xr, mu)
            root = math.sqrt(q / n)
            coef = s / (n * root * d * d) if root > 0 else 0.0
        mdy = sdy / k_
        dxr = dx[r]
        for i in range(k_):
            dxr[i] = (numba.float64(dyr[i]) - mdy) / d - (numba.float64(xr[i]) - mu) * coef


@njit(**HELPER)
def standardize_backward(dy, x, mean, denom, ddof, eps_in_root, dx, nblk):
    dy, x, dx = borrow((dy, x, dx))
    parallel_blocks(_standardize_backward_body, nblk, (dy, x, mean, denom, ddof, eps_in_root, dx, nblk))
