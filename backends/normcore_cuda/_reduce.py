"""Device helpers shared by the numba-cuda kernels: the row-group sums and the sums' shift.

* :func:`_group_sum` / :func:`_group_sum2`: the sum of one (two) per-thread partials over a row
  group of ``tpr`` threads, every thread getting the total. A butterfly warp shuffle
  (``cuda.shfl_xor_sync``, five steps: lane ``i`` adds lane ``i ^ 16``, ``i ^ 8``, ...) sums each
  warp; when the row group is a whole block, lane 0 of each warp writes its warp's sum to shared
  memory and a second butterfly over those (at most 32) values gives the block's sum. Fixed order:
  results are deterministic, and identical on every thread. All threads of a block must call it
  (it synchronizes the block when ``tpr > 32``).
* :func:`shift_sample`: the shift of a row's or channel's shifted sums, built per accumulator type.
* :func:`row_group` and :func:`slab`: which row group and lane a thread is (row kernels), and
  which contiguous share of a channel's ``N * L`` elements a block takes (channel kernels).

Under the simulator ``cuda.shfl_xor_sync`` does not exist: by default the whole reduction is
emulated with one shared buffer and numpy (the same butterflies, additions, order and precision,
so the same bits); with ``NORMCORE_TEST_CUDASIM_SHUFFLE=1`` the GPU code itself runs on an
emulated ``shfl_xor_sync``.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
from numba import cuda

from normcore.config import env_flag

from ._launch import SIMULATOR, WARP

FULL_MASK = 0xFFFFFFFF

#: In the simulator, run the GPU reduction code itself on an emulated ``shfl_xor_sync`` (slower;
#: ``NORMCORE_TEST_CUDASIM_SHUFFLE=1``) instead of the fast whole-reduction emulation further down. The
#: conformance kit checks that path too: ``NUMBA_ENABLE_CUDASIM=1 NORMCORE_TEST_CUDASIM_SHUFFLE=1
#: normcore verify --backend numba-cuda --quick``.
SIM_SHUFFLE = SIMULATOR and env_flag("NORMCORE_TEST_CUDASIM_SHUFFLE")

#: The simulator's ``cuda.shared.array`` allocates a call site's buffer on its first call in a
#: launch with an unlocked get-then-set, so two threads arriving together can each get their own
#: buffer and never see each other's values (a rare wrong reduction: CI failed on it once). The
#: simulator-only code below allocates under this lock. The kernels' own ``sh`` buffers are used
#: only in the ``NORMCORE_TEST_CUDASIM_SHUFFLE`` mode and are not covered.
_SIM_SHARED_LOCK = threading.Lock()

if not SIMULATOR or SIM_SHUFFLE:
    if SIMULATOR:

        def _shfl_xor(v, lanemask):
            """Emulated ``cuda.shfl_xor_sync`` (all threads of the block must call it)."""
            with _SIM_SHARED_LOCK:
                buf = cuda.shared.array(1024, np.float64)  # float64 holds float32 exactly
            tid = cuda.threadIdx.x
            cuda.syncthreads()
            buf[tid] = v
            cuda.syncthreads()
            return np.asarray(v).dtype.type(buf[tid ^ lanemask])

    else:

        @cuda.jit(device=True)
        def _shfl_xor(v, lanemask):
            return cuda.shfl_xor_sync(FULL_MASK, v, lanemask)

    @cuda.jit(device=True)
    def _warp_sum(v):
        """Butterfly sum over a warp: every lane gets the total (the same bits: + commutes)."""
        v += _shfl_xor(v, 16)
        v += _shfl_xor(v, 8)
        v += _shfl_xor(v, 4)
        v += _shfl_xor(v, 2)
        v += _shfl_xor(v, 1)
        return v

    @cuda.jit(device=True)
    def _group_sum(v, sh, tpr, zero):
        """Sum of ``v`` over the ``tpr`` threads of a row group; every thread gets the total.

        ``tpr`` is 32 (a warp) or the block size (a multiple of 32, at most 1024). All threads
        of the block call it. Fixed order, so results are deterministic.
        """
        v = _warp_sum(v)
        if tpr > WARP:
            tid = cuda.threadIdx.x
            lane = tid % WARP
            cuda.syncthreads()  # earlier readers of sh are done
            if lane == 0:
                sh[tid // WARP] = v
            cuda.syncthreads()
            t = zero
            if lane < cuda.blockDim.x // WARP:
                t = sh[lane]
            v = _warp_sum(t)
        return v

    @cuda.jit(device=True)
    def _group_sum2(a, b, sh, sh2, tpr, zero):
        """:func:`_group_sum` of two values at once (one shared-memory round trip)."""
        a = _warp_sum(a)
        b = _warp_sum(b)
        if tpr > WARP:
            tid = cuda.threadIdx.x
            lane = tid % WARP
            cuda.syncthreads()
            if lane == 0:
                sh[tid // WARP] = a
                sh2[tid // WARP] = b
            cuda.syncthreads()
            ta = zero
            tb = zero
            if lane < cuda.blockDim.x // WARP:
                ta = sh[lane]
                tb = sh2[lane]
            a = _warp_sum(ta)
            b = _warp_sum(tb)
        return a, b

else:
    # ``cuda.shfl_xor_sync`` does not exist in the simulator. This emulation of ``_group_sum``
    # above exchanges the values through a shared buffer and evaluates the very same butterflies
    # (same additions, order and precision), so it returns the bits the GPU code returns, with
    # two ``syncthreads`` instead of up to twelve. Every thread of the block must call it, as
    # on the GPU. They are simulator device functions (``cuda.jit(device=True)``) because they
    # are called from kernels of other modules: the simulator gives a function its fake ``cuda``
    # module (``threadIdx``, ``shared``, ``syncthreads``) only by swapping the ``cuda`` globals of
    # the module of the kernel or device function being called.
    _LANES = np.arange(WARP)

    def _butterfly(vals):
        for m in (16, 8, 4, 2, 1):
            vals = vals + vals[..., _LANES ^ m]
        return vals

    def _reduce_rows(vals, tid, tpr, dt):
        """The GPU butterflies over ``vals`` (one value per thread of the block)."""
        if tpr == WARP:
            w0 = tid - tid % WARP
            return _butterfly(vals[w0 : w0 + WARP].astype(dt))[tid % WARP]
        per_warp = _butterfly(vals.astype(dt).reshape(-1, WARP))[:, 0]
        t = np.zeros(WARP, dt)
        t[: per_warp.size] = per_warp
        return _butterfly(t)[tid % WARP]

    @cuda.jit(device=True)
    def _group_sum(v, sh, tpr, zero):
        with _SIM_SHARED_LOCK:
            buf = cuda.shared.array(1024, np.float64)  # float64 holds float32 values exactly
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        cuda.syncthreads()
        buf[tid] = v
        cuda.syncthreads()
        return _reduce_rows(buf[:nt], tid, tpr, np.asarray(zero).dtype)

    @cuda.jit(device=True)
    def _group_sum2(a, b, sh, sh2, tpr, zero):
        with _SIM_SHARED_LOCK:
            buf = cuda.shared.array((2, 1024), np.float64)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        dt = np.asarray(zero).dtype
        cuda.syncthreads()
        buf[0, tid] = a
        buf[1, tid] = b
        cuda.syncthreads()
        return _reduce_rows(buf[0, :nt], tid, tpr, dt), _reduce_rows(buf[1, :nt], tid, tpr, dt)


@cuda.jit(device=True)
def row_group(tpr):
    """(g, groups, lane): this thread's row group in the grid (groups of ``tpr`` threads,
    ``blockDim.x // tpr`` a block), the number of groups in the grid, its lane in its group."""
    tid = cuda.threadIdx.x
    gpb = cuda.blockDim.x // tpr
    return cuda.blockIdx.x * gpb + tid // tpr, cuda.gridDim.x * gpb, tid % tpr


@cuda.jit(device=True)
def slab(total, S, s):
    """[lo, hi): share ``s`` of ``S`` contiguous shares of ``total`` elements."""
    per = (total + S - 1) // S
    lo = s * per
    return lo, min(total, lo + per)


@functools.cache
def shift_sample(acc_t):
    """The device function ``_sample(x, i, valid, zero)`` for accumulator type ``acc_t``.

    Row and channel sums are *shifted*: ``sum(x - k)`` and ``sum((x - k)**2)`` about a sample
    ``k`` of the row or channel, which keeps them accurate (no cancellation) for data with a
    large mean. Built once a type, shared by the kernel families.
    """

    @cuda.jit(device=True, inline=True)
    def _sample(x, i, valid, zero):
        """x[i] in acc precision as the shift of a row's or channel's sums (so a constant one has
        exactly its value as mean and 0 as variance), or 0 where it is not finite (inf - inf
        would make the mean NaN where it is inf) or where the row does not exist."""
        if not valid:
            return zero
        v = acc_t(x[i])
        return v if math.isfinite(v) else zero

    return _sample
