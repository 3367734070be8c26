"""Shared jit options and small reduction helpers used by every kernel module.

The helpers are plain ``@njit`` functions on 1-D views; they are compiled into (inlined by LLVM
into) the parallel kernel that calls them, specialized on the view's layout. They keep four
independent float64 accumulators: without ``fastmath`` LLVM may not reorder a floating-point sum,
so a single accumulator would serialize every add on its latency (4 cycles); four independent
chains in a fixed order keep the result deterministic and let the SLP vectorizer pack them into
one vector register.
"""

from __future__ import annotations

import numba
from numba import njit

#: Options of every parallel kernel. error_model="numpy": division by zero gives inf/nan like the
#: reference instead of raising. fastmath stays off: results must match the reference bit-for-bit
#: in the rounding sense and sums must not be reassociated nondeterministically.
KERNEL = {"parallel": True, "cache": True, "fastmath": False, "error_model": "numpy", "nogil": True}
HELPER = {"cache": True, "fastmath": False, "error_model": "numpy", "nogil": True}


def num_blocks(units: int) -> int:
    """Fixed block count for a reduction over ``units`` independent pieces of work.

    One block per thread (at call time): the partition depends only on the thread count, so the
    merge order of partial sums, hence the result, is deterministic for a fixed thread count.
    """
    return max(1, min(int(units), numba.get_num_threads()))


@njit(**HELPER)
def sums_shifted(v, k):
    """(sum(v - k), sum((v - k)**2)) in float64. With k a sample of the data (or the mean) the
    one-pass variance ``S2/M - (S1/M)**2`` has no catastrophic cancellation."""
    n = v.shape[0]
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    q0 = 0.0
    q1 = 0.0
    q2 = 0.0
    q3 = 0.0
    i = 0
    while i + 4 <= n:
        t0 = numba.float64(v[i]) - k
        t1 = numba.float64(v[i + 1]) - k
        t2 = numba.float64(v[i + 2]) - k
        t3 = numba.float64(v[i + 3]) - k
        a0 += t0
        a1 += t1
        a2 += t2
        a3 += t3
        q0 += t0 * t0
        q1 += t1 * t1
        q2 += t2 * t2
        q3 += t3 * t3
        i += 4
    while i < n:
        t0 = numba.float64(v[i]) - k
        a0 += t0
        q0 += t0 * t0
        i += 1
    return (a0 + a1) + (a2 + a3), (q0 + q1) + (q2 + q3)


@njit(**HELPER)
def dot2_centered(dy, x, mu):
    """(sum(dy), sum(dy * (x - mu))) in float64."""
    n = dy.shape[0]
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    q0 = 0.0
    q1 = 0.0
    q2 = 0.0
    q3 = 0.0
    i = 0
    while i + 4 <= n:
        t0 = numba.float64(dy[i])
        t1 = numba.float64(dy[i + 1])
        t2 = numba.float64(dy[i + 2])
        t3 = numba.float64(dy[i + 3])
        a0 += t0
        a1 += t1
        a2 += t2
        a3 += t3
        q0 += t0 * (numba.float64(x[i]) - mu)
        q1 += t1 * (numba.float64(x[i + 1]) - mu)
        q2 += t2 * (numba.float64(x[i + 2]) - mu)
        q3 += t3 * (numba.float64(x[i + 3]) - mu)
        i += 4
    while i < n:
        t0 = numba.float64(dy[i])
        a0 += t0
        q0 += t0 * (numba.float64(x[i]) - mu)
        i += 1
    return (a0 + a1) + (a2 + a3), (q0 + q1) + (q2 + q3)


@njit(**HELPER)
def wdot2_centered(dy, x, w, mu):
    """(sum(w * dy), sum(w * dy * (x - mu))) in float64 (w a float64 vector)."""
    n = dy.shape[0]
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    q0 = 0.0
    q1 = 0.0
    q2 = 0.0
    q3 = 0.0
    i = 0
    while i + 4 <= n:
        t0 = w[i] * numba.float64(dy[i])
        t1 = w[i + 1] * numba.float64(dy[i + 1])
        t2 = w[i + 2] * numba.float64(dy[i + 2])
        t3 = w[i + 3] * numba.float64(dy[i + 3])
        a0 += t0
        a1 += t1
        a2 += t2
        a3 += t3
        q0 += t0 * (numba.float64(x[i]) - mu)
        q1 += t1 * (numba.float64(x[i + 1]) - mu)
        q2 += t2 * (numba.float64(x[i + 2]) - mu)
        q3 += t3 * (numba.float64(x[i + 3]) - mu)
        i += 4
    while i < n:
        t0 = w[i] * numba.float64(dy[i])
        a0 += t0
        q0 += t0 * (numba.float64(x[i]) - mu)
        i += 1
    return (a0 + a1) + (a2 + a3), (q0 + q1) + (q2 + q3)
