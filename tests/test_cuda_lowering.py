"""The CUDA kernels type and lower for the real CUDA target (compute capability 9.0), no GPU needed.

The simulator stage of CI (``NUMBA_ENABLE_CUDASIM=1``) runs the kernels as Python, so it never
checks that they compile with Numba's CUDA target, and the shuffle reductions it emulates are
not even the code a GPU runs. This runs Numba's CUDA front end (typing and lowering to NVVM IR)
on each kernel for the argument types the backend passes, and checks the accumulators' precision:
float64 for float32 and float64 input, float32 for float16 input. It stops short of PTX, which
needs libNVVM; without a CUDA driver the device's compute capability is answered here.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
                                reason="the simulator replaces the CUDA target")
cuda_dispatcher = pytest.importorskip("numba.cuda.dispatcher")

from numba import types  # noqa: E402
from numba.np import numpy_support  # noqa: E402

I64, B = types.int64, types.boolean
CC = (9, 0)


def _arr(dt: object) -> types.Array:
    return types.Array(numpy_support.from_dtype(np.dtype(dt)), 1, "C")


def _accumulator(xdt: str) -> type:
    return np.float32 if xdt == "float16" else np.float64


def _signatures(xdt: str) -> dict[str, tuple[list, tuple[str, ...]]]:
    """Kernel name -> (argument types as the backend passes them, accumulator variables)."""
    acc = _accumulator(xdt)
    a = types.float32 if acc is np.float32 else types.float64
    x, ac, w = _arr(xdt), _arr(acc), _arr("float32")
    s = _arr("float64" if xdt == "float64" else "float32")
    return {
        "group_forward": ([x, w, w, x, s, s, I64, I64, I64, I64, I64, a, B, B, B, I64, I64],
                          ("s", "q", "mean", "rstd", "sc")),
        "group_backward": ([x, x, s, s, w, x, ac, ac, I64, I64, I64, I64, I64, a, B, B, B, I64,
                            I64], ("s1", "s2", "xh", "gv")),
        "column_sum": ([ac, ac, I64, I64, w, w], ()),
        "group_wb_partials": ([x, x, s, s, I64, I64, I64, I64, I64, a, B, I64, ac, ac],
                              ("aw", "ab")),
        "rows_forward": ([x, x, s, s, I64, I64, a, a, B, I64, I64], ("mean", "den")),
        "rows_backward": ([x, x, s, s, x, I64, I64, a, B, I64, I64], ("sdc", "coef")),
        "channel_partials": ([x, I64, I64, I64, I64, ac, ac], ("a", "q")),
        "channel_finish": ([x, ac, ac, I64, I64, I64, I64, s, s], ()),
        "channel_fold": ([s, s, w, w, a, B, B, I64, ac, ac], ()),
        "channel_apply": ([x, x, ac, ac, I64, I64, I64], ()),
        "channel_bwd_partials": ([x, x, s, I64, I64, I64, I64, ac, ac], ("aw", "ab")),
        "channel_bwd_finish": ([ac, ac, I64, I64, I64, s, s, w, a, B, B, w, w, ac, ac, ac], ()),
        "channel_bwd_apply": ([x, x, s, ac, ac, ac, x, I64, I64, I64], ()),
    }


@pytest.fixture
def kernels(monkeypatch: pytest.MonkeyPatch):
    class _Device:
        compute_capability = CC

    try:
        cuda_dispatcher.get_current_device().compute_capability  # noqa: B018
    except Exception:  # no driver or no GPU: the front end only needs the capability
        monkeypatch.setattr(cuda_dispatcher, "get_current_device", lambda: _Device())
    from normcore_cuda import _kernels

    return _kernels


def _lower(kern, args: list):
    from numba.cuda import compiler

    return compiler.compile_cuda(kern.py_func, types.void, tuple(args), cc=CC)


@pytest.mark.parametrize("xdt", ["float32", "float16", "float64"])
@pytest.mark.parametrize("name", list(_signatures("float32")))
def test_kernel_lowers_with_its_accumulator(kernels, name: str, xdt: str) -> None:
    args, accumulators = _signatures(xdt)[name]
    cres = _lower(getattr(kernels.get(_accumulator(xdt)), name), args)
    typemap = cres.type_annotation.typemap
    want = np.dtype(_accumulator(xdt)).name
    assert {v: str(typemap[v]) for v in accumulators} == {v: want for v in accumulators}


@pytest.mark.parametrize("xdt", ["float32", "float16", "float64"])
def test_dropout_kernel_lowers(kernels, xdt: str) -> None:
    x = _arr(xdt)
    cres = _lower(kernels.dropout_kernel, [x, x, I64, types.uint64, types.uint64, types.float64])
    assert str(cres.type_annotation.typemap["h"]) == "uint64"  # the counter hash stays 64-bit


def test_running_update_kernel_lowers(kernels) -> None:
    w = _arr("float32")
    _lower(kernels.running_update_kernel,
           [w, w, w, w, I64, I64, types.float64, types.float64, w, w])
