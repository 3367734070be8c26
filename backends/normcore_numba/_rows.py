"""Row-view kernels (weight standardization) and dropout.

Weight standardization, x2 (R, K), statistics per row: the forward reads each row twice (its
mean, then the centered sum of squares: an exact two-pass as in the reference; the second read
hits cache, weight rows are short) and writes y -> 2s per element from memory (s = itemsize);
the backward reads x and dy for the row sums and again for dx, writes dx -> 3s. Rows are
independent: one contiguous range of rows per block.

Dropout: read x, write y -> 2s, like a copy. The keep mask is the SplitMix64 hash of each
element's flat C-order index (``normcore.backend.dropout_keep_mask``), computed in uint64, never
stored. Elements are independent: one contiguous range per block.

Every ``@njit`` function these kernels compile lives in this file or in ``_shared`` (see
``_jit`` on the cache).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import helper, kernel
from ._shared import dot, shift, sums


@kernel
def standardize(nblk, x, eps, ddof, eps_in_root, y, mean, denom):
    """y = (x - mean) / denom per row; mean and denom (R,), in their arrays' dtype, into mean,
    denom."""
    r_, k_ = x.shape
    for blk in prange(nblk):
        for r in range(blk * r_ // nblk, (blk + 1) * r_ // nblk):
            xr = x[r]
            k = shift(xr[0])  # a constant row's mean is then exactly its value
            s1, _ = sums(xr, k)
            mu = k + s1 / k_
            _, q = sums(xr, mu)
            v = q / (k_ - ddof)
            dn = math.sqrt(v + eps) if eps_in_root else math.sqrt(v) + eps
            mean[r] = mu
            denom[r] = dn
            inv = 1.0 / dn
            yr = y[r]
            for i in range(k_):
                yr[i] = (np.float64(xr[i]) - mu) * inv


@kernel
def standardize_backward(nblk, dy, x, mean, denom, ddof, eps_in_root, dx):
    """dx into dx (see Backend.standardize_rows_backward)."""
    r_, k_ = x.shape
    n = k_ - ddof
    for blk in prange(nblk):
        for r in range(blk * r_ // nblk, (blk + 1) * r_ // nblk):
            xr = x[r]
            dyr = dy[r]
            mu = mean[r]
            d = denom[r]
            sdy, s = dot(dyr, xr, mu)
            if eps_in_root:
                coef = s / (n * d * d * d)
            else:
                _, q = sums(xr, mu)
                root = math.sqrt(q / n)
                coef = s / (n * root * d * d) if root > 0 else 0.0
            mdy = sdy / k_
            dxr = dx[r]
            for i in range(k_):
                dxr[i] = (np.float64(dyr[i]) - mdy) / d - (np.float64(xr[i]) - mu) * coef


_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


@helper
def _splitmix64(z):
    z = z + _C0
    z = (z ^ (z >> np.uint64(30))) * _C1
    z = (z ^ (z >> np.uint64(27))) * _C2
    return z ^ (z >> np.uint64(31))


@kernel
def dropout(nblk, x, seed, threshold, scale, y):
    """y[i] = x[i] * scale where splitmix64(seed ^ splitmix64(i)) >> 40 >= threshold, else 0,
    for 1-D C-order x and y."""
    n = x.shape[0]
    for blk in prange(nblk):
        for i in range(blk * n // nblk, (blk + 1) * n // nblk):
            h = _splitmix64(seed ^ _splitmix64(np.uint64(i)))
            y[i] = np.float64(x[i]) * scale if (h >> np.uint64(40)) >= threshold else 0.0
