"""Conformance cases for SyncBatchNorm's backward kernels (``channel_backward_sums`` and
``channel_normalize_backward_from_sums``, optional in the contract).

They run on every backend: a backend that lists a kernel is checked on its own implementation,
any other on the base class's default composed of its required kernels, which is exactly what
:class:`normcore.SyncBatchNorm` runs there. Both are compared with the NumPy reference, with sums
and counts of a larger batch than the one given (as another process's rows would make them), and
with :meth:`~normcore.backend.Backend.channel_normalize_backward` when the sums are x's own.
"""

from __future__ import annotations

import functools

import numpy as np

import normcore
from normcore import registry
from normcore.backend import Backend

from .cases import REFERENCE, Case, _check_outputs, _data, _layout, _to

_PARTS = ("channel_normalize", "channel_normalize_backward")


def _sync_backward_case(shape: tuple[int, int, int], dtype: str, layout: str, affine: bool,
                        backend: Backend) -> None:
    ref = normcore.get_backend(REFERENCE)
    x = _layout(_data(shape, dtype, "x"), layout)
    dy = _layout(_data(shape, dtype, "dy", offset=0.0), layout)
    c = shape[1]
    w = _data((c,), dtype, "w", offset=1.0) if affine else None
    mean, var = ref.channel_moments(x)
    sums = registry.kernel(backend, "channel_backward_sums")
    got = sums(_to(backend, dy), _to(backend, x), _to(backend, mean), _to(backend, var), 1e-5)
    want = ref.channel_backward_sums(dy, x, mean, var, 1e-5)
    _check_outputs(got, want, dtype, ("channel_backward_sums sum_dy", "sum_dy_xhat"))

    from_sums = registry.kernel(backend, "channel_normalize_backward_from_sums")
    # the sums are x's own: dx equals channel_normalize_backward's with batch statistics
    m = shape[0] * shape[2]
    got = from_sums(_to(backend, dy), _to(backend, x), _to(backend, mean), _to(backend, var), 1e-5,
                    _to(backend, w), _to(backend, want[0]), _to(backend, want[1]), m)
    own = ref.channel_normalize_backward(dy, x, mean, var, 1e-5, w, True)[0]
    _check_outputs(got, own, dtype, ("channel_normalize_backward_from_sums dx (own sums)",))
    # sums and count of a larger batch: x's rows and as many again from elsewhere
    other = _data(shape, dtype, "other-dy", offset=0.3)
    o_dy, o_dyx = ref.channel_backward_sums(other, x, mean, var, 1e-5)
    sd = want[0].dtype
    g_dy = (want[0].astype(np.float64) + o_dy).astype(sd)
    g_dyx = (want[1].astype(np.float64) + o_dyx).astype(sd)
    got = from_sums(_to(backend, dy), _to(backend, x), _to(backend, mean), _to(backend, var), 1e-5,
                    _to(backend, w), _to(backend, g_dy), _to(backend, g_dyx), 2 * m)
    _check_outputs(got, ref.channel_normalize_backward_from_sums(dy, x, mean, var, 1e-5, w, g_dy,
                                                                  g_dyx, 2 * m), dtype,
                   ("channel_normalize_backward_from_sums dx (global sums)",))


def sync_cases() -> list[Case]:
    """The SyncBatchNorm backward kernels on odd shapes, strides, dtypes, with and without weight."""
    cases = []
    for dtype in ("float64", "float32", "float16"):
        for shape in ((1, 1, 2), (2, 3, 5), (7, 4, 13), (3, 17, 1)):
            for layout in ("contiguous", "channels_last", "sliced"):
                for affine in (True, False):
                    cases.append(Case(
                        f"sync-backward:{'x'.join(map(str, shape))}:{layout}:affine={affine}:"
                        f"{dtype}", functools.partial(_sync_backward_case, shape, dtype, layout,
                                                      affine), _PARTS, dtype=dtype))
    cases.append(Case("sync-backward-big:64x8x211:float32",
                      functools.partial(_sync_backward_case, (64, 8, 211), "float32",
                                        "contiguous", True), _PARTS, big=True))
    return cases
