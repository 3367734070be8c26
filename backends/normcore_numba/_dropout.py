"""Dropout kernel: counter-based keep mask from the SplitMix64 hash of the flat C-order index.

Bandwidth accounting per element (s = itemsize): read x, write y -> 2s, like a copy; the hash
(two 64-bit multiplies) is computed, never stored, so no mask array is read or written. All
arithmetic is uint64 (constants typed np.uint64 so numba never promotes to float), matching
``normcore.backend.splitmix64`` bit for bit. Elements are independent: one block per thread.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from ._blocks import parallel_blocks
from ._common import HELPER, borrow

#: The fingerprint of the package's compiled code (see _fingerprint): in this file, so
#: that numba's disk cache drops these kernels whenever any of that code changes.
CODE_SHA256 = "6adc431478b936b911208132f5a59a11b8b1334d36670d322a76640b09a89b74"

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S40 = np.uint64(40)


@njit(**HELPER)
def splitmix64(z):
    z = z + _C0
    z = (z ^ (z >> _S30)) * _C1
    z = (z ^ (z >> _S27)) * _C2
    return z ^ (z >> _S31)


@njit(inline="always", **HELPER)
def _dropout_body(b, a):
    x, seed, thr, scale, y, nblk = a
    n = x.shape[0]
    for i in range(b * n // nblk, (b + 1) * n // nblk):
        h = splitmix64(seed ^ splitmix64(numba.uint64(i)))
        if (h >> _S40) >= thr:
            y[i] = numba.float64(x[i]) * scale
        else:
            y[i] = 0.0


@njit(**HELPER)
def dropout_flat(x, seed, thr, scale, y, nblk):
    """y[i] = x[i] * scale if keep(i) else 0, for 1-D C-order x and y, in nblk blocks."""
    x, y = borrow((x, y))
    parallel_blocks(_dropout_body, nblk, (x, seed, thr, scale, y, nblk))
