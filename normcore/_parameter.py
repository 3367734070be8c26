"""``Parameter``: a module's learnable array and its gradient. Its own module because both the
modules (which own parameters) and the input checks (which accept one wherever torch's
functional API takes an ``nn.Parameter``) need it."""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any


class Parameter:
    """A learnable array (``data``, on the module's backend) and its accumulated ``grad``.

    The functional API takes a Parameter wherever it takes an array, as torch's takes an
    ``nn.Parameter``:

    >>> import numpy as np, normcore, normcore.functional as F
    >>> ln = normcore.LayerNorm(2, dtype=np.float64)
    >>> y, _ = F.layer_norm(np.array([[1.0, 3.0]]), 2, ln.weight, ln.bias, eps=0.0)
    >>> y.tolist()
    [[-1.0, 1.0]]
    """

    def __init__(self, data: Array) -> None:
        self.data = data
        self.grad: Array | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        from ._interop import np_dtype

        return np_dtype(self.data.dtype)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"
