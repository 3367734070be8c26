"""Type-infer and lower every kernel for the REAL CUDA target, without a GPU (a developer check).

Run WITHOUT the simulator::

    python -m normcore_cuda._typecheck

The simulator executes kernels as Python and so never checks that they compile with Numba's CUDA
target. This script runs Numba's CUDA front end (typing and lowering to NVVM IR, for compute
capability 9.0) on each kernel and each accumulator type, for the argument types the backend
passes, and prints the types of the accumulators. It stops short of PTX generation (which needs
libNVVM); on a machine without a CUDA driver it answers the device's compute capability itself
(a test-only patch of ``numba.cuda.dispatcher.get_current_device`` in this process).
"""

from __future__ import annotations

import os
import sys

import numpy as np


def main() -> int:
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
        print("run without NUMBA_ENABLE_CUDASIM=1", file=sys.stderr)
        return 2
    import numba.cuda.dispatcher as dispatcher
    from numba import types
    from numba.cuda import compiler
    from numba.np import numpy_support

    class _Dev:
        compute_capability = (9, 0)

    try:
        dispatcher.get_current_device().compute_capability  # noqa: B018
    except Exception:
        dispatcher.get_current_device = lambda: _Dev()

    from normcore_cuda import _kernels as K

    def arr(dt):
        return types.Array(numpy_support.from_dtype(np.dtype(dt)), 1, "C")

    i64, b = types.int64, types.boolean
    failures = 0

    def check(kern, args, show=()):
        nonlocal failures
        name = kern.py_func.__name__
        try:
            cres = compiler.compile_cuda(kern.py_func, types.void, tuple(args), cc=(9, 0))
        except Exception as exc:  # report and go on
            failures += 1
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc).splitlines()[:6]}")
            return
        tm = cres.type_annotation.typemap
        shown = {v: str(tm[v]) for v in show if v in tm}
        print(f"ok   {name} {shown if shown else ''}")

    for xdt in ("float32", "float16", "float64"):
        acc = np.float32 if xdt == "float16" else np.float64
        a = types.float32 if acc is np.float32 else types.float64
        kk = K.get(acc)
        x = arr(xdt)
        s = arr("float64" if xdt == "float64" else "float32")
        ac = arr(acc)
        w = arr("float32")
        print(f"== x {xdt}, accumulator {np.dtype(acc).name}")
        check(kk.group_forward, [x, w, w, x, s, s, i64, i64, i64, i64, i64, a, b, b, b, i64, i64],
              ("s", "q", "mean", "rstd", "sc"))
        check(kk.group_backward,
              [x, x, s, s, w, x, ac, ac, i64, i64, i64, i64, i64, a, b, b, b, i64, i64],
              ("s1", "s2", "xh", "gv"))
        check(kk.column_sum, [ac, ac, i64, i64, w, w])
        check(kk.group_wb_partials, [x, x, s, s, i64, i64, i64, i64, i64, a, b, i64, ac, ac],
              ("aw", "ab"))
        check(kk.rows_forward, [x, x, s, s, i64, i64, a, a, b, i64, i64], ("mean", "den"))
        check(kk.rows_backward, [x, x, s, s, x, i64, i64, a, b, i64, i64], ("sdc", "coef"))
        check(kk.channel_partials, [x, i64, i64, i64, i64, ac, ac], ("a", "q"))
        check(kk.channel_finish, [x, ac, ac, i64, i64, i64, i64, s, s])
        check(kk.channel_fold, [s, s, w, w, a, b, b, i64, ac, ac])
        check(kk.channel_apply, [x, x, ac, ac, i64, i64, i64])
        check(kk.channel_bwd_partials, [x, x, s, i64, i64, i64, i64, ac, ac], ("aw", "ab"))
        check(kk.channel_bwd_finish,
              [ac, ac, i64, i64, i64, s, s, w, a, b, b, w, w, ac, ac, ac])
        check(kk.channel_bwd_apply, [x, x, s, ac, ac, ac, x, i64, i64, i64])
        check(K.dropout_kernel, [x, x, i64, types.uint64, types.uint64, types.float64], ("h",))
    check(K.running_update_kernel, [w, w, w, w, i64, i64, types.float64, types.float64, w, w])
    print("all kernels lower for the CUDA target" if not failures else f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
