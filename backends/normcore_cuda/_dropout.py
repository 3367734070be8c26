"""The dropout kernel of the numba-cuda backend: a counter-based mask, no state on the device.

Element ``i`` is kept where ``splitmix64(seed ^ splitmix64(i)) >> 40 >= thr`` (24 random bits
against the threshold of :func:`normcore.backend.dropout_threshold`), evaluated in uint64
arithmetic (wrapping multiplication is intended), so the mask depends only on the seed and the
element's flat index: the same on every backend and any launch configuration.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

_U = np.uint64
_C0 = _U(0x9E3779B97F4A7C15)
_C1 = _U(0xBF58476D1CE4E5B9)
_C2 = _U(0x94D049BB133111EB)
_S30 = _U(30)
_S27 = _U(27)
_S31 = _U(31)
_S40 = _U(40)


@cuda.jit(device=True)
def _splitmix64(z):
    z = z + _C0
    z = (z ^ (z >> _S30)) * _C1
    z = (z ^ (z >> _S27)) * _C2
    return z ^ (z >> _S31)


@cuda.jit
def dropout_kernel(x, y, n, seed, thr, scale):
    """Inverted dropout: ``y[i] = x[i] * keep(i) * scale``, ``keep(i)`` the counter hash above.

    Grid-stride loop over the elements, computed in float64 and stored in ``y``'s
    type. Traffic: ``x`` read once, ``y`` written once.
    """
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        h = _splitmix64(seed ^ _splitmix64(_U(i)))
        keep = 1.0 if (h >> _S40) >= thr else 0.0
        y[i] = np.float64(x[i]) * keep * scale

