"""CUDA kernels of the numba-cuda backend (imported lazily by :mod:`normcore_cuda.backend`).

All kernels take flat, C-contiguous 1-D arrays plus the dimensions of the canonical view.

Design (the way fast GPU normalization layers do it):

* Row kernels (group view rows of ``M = D*L`` elements, weight-standardization rows) assign a
  *row group* of ``tpr`` threads to a row: one warp per row when rows are short (a block then
  holds several rows), one whole block per row when rows are long. A fixed grid of row groups
  strides over the rows. Statistics are two-pass over the row (mean about the row's first
  element, then centred squares), the
  per-thread partials are merged by a butterfly warp shuffle (``cuda.shfl_xor_sync``) and, in
  block mode, a second warp-shuffle stage over one value per warp kept in shared memory. The
  output pass folds rstd and weight into one scale per element: ``y = (x - mean) * scale + bias``
  (subtracting the mean first keeps float32 exact for inputs with a large mean).
* Accumulation is in float64 for float32/float64 input and float32 for float16 input ("acc");
  the kernels are built once per accumulator type by :func:`get`.
* Channel statistics (BatchNorm, view ``(N, C, L)``) are a two-stage column reduction: stage 1 is
  a grid of ``(C, S)`` blocks, each reducing one slab of the ``N*L`` elements of a channel into a
  per-block partial (shifted sum and shifted sum of squares, shift = the channel's first element,
  in acc precision); stage 2 merges the ``S`` partials of a channel in a fixed order. No atomics,
  no full-size temporaries, deterministic.
* Backward kernels: the group backward kernel computes dx and, for LayerNorm-like views
  (``L == 1``), per-row-group partial dweight/dbias kept in a small per-thread local array,
  written once per row group and finished by a column-sum kernel. Otherwise dweight/dbias come
  from a two-stage column reduction like the channel statistics.
* Dropout evaluates the splitmix64 hash in uint64 arithmetic in the kernel.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) ``cuda.shfl_xor_sync`` does not exist, so
the row-group reduction is emulated with a shared buffer and ``syncthreads``, evaluating the same
butterflies in the same precision (every kernel calls its reductions uniformly from all threads
of a block, which this emulation requires), and the launch configuration uses small blocks so
the Python-threaded simulator stays fast. ``tests/test_cuda_lowering.py`` checks in CI, without
a GPU, that the GPU code (not run by the simulator) types and lowers for the CUDA target.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np
from numba import cuda

from normcore.config import env_flag

try:  # the authoritative switch once numba is imported
    from numba import config as _nb_config

    SIMULATOR = bool(getattr(_nb_config, "ENABLE_CUDASIM", 0))
except Exception:  # pragma: no cover
    SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"

FULL_MASK = 0xFFFFFFFF
WARP = 32
#: Most elements one thread accumulates dweight/dbias partials for in registers (group backward).
LOCAL_COLS = 32

# ------------------------------------------------------------------ launch configuration
if SIMULATOR:
    # The simulator runs each CUDA thread as a Python thread and its block manager polls them;
    # with the default 5 ms GIL switch interval every syncthreads costs milliseconds. Simulator
    # only: a shorter interval makes kernel launches several times faster.
    if sys.getswitchinterval() > 5e-4:
        sys.setswitchinterval(5e-4)
    #: threads of a block in warp-per-row mode (rows per block = ROW_BLOCK // 32)
    ROW_BLOCK = 64
    #: rows longer than this get a whole block each
    SHORT_ROW_MAX = 96
    #: threads per row in block-per-row mode, by row length
    LONG_ROW_THREADS = ((1 << 62, 64),)
    #: at most this many blocks in a row-kernel grid (rows are strided)
    MAX_ROW_BLOCKS = 3
    FUSED_THREADS = 1 << 20
    ELT_BLOCK = 32
    MAX_ELT_BLOCKS = 3
    RED_BLOCK = 32
    MAX_SLABS = 2
    TARGET_RED_BLOCKS = 4
else:
    ROW_BLOCK = 256
    SHORT_ROW_MAX = 1024
    # at most 512 threads a block: Numba kernels in float64 can exceed the 64 registers a
    # thread that a 1024-thread block allows
    LONG_ROW_THREADS = ((4096, 256), (1 << 62, 512))
    MAX_ROW_BLOCKS = 132 * 8
    #: fused group backward: about one wave (132 SMs x 1024 threads), which bounds the
    #: per-row-group dweight/dbias partials to ~8 % of the traffic of the kernel
    FUSED_THREADS = 132 * 1024
    ELT_BLOCK = 256
    MAX_ELT_BLOCKS = 132 * 32
    RED_BLOCK = 256
    MAX_SLABS = 256
    TARGET_RED_BLOCKS = 132 * 8


def row_launch(rows: int, m: int, fused: bool = False) -> tuple[int, int, int, int]:
    """``(blocks, threads, tpr, niter)`` for a row kernel over ``rows`` rows of ``m`` elements.

    ``fused``: the group backward with per-row-group partials; fewer, longer-lived row groups.
    """
    if m <= SHORT_ROW_MAX:
        threads, tpr = ROW_BLOCK, WARP
    else:
        for limit, t in LONG_ROW_THREADS:
            if m <= limit:
                threads = tpr = t
                break
    gpb = threads // tpr
    cap = MAX_ROW_BLOCKS if not fused else max(1, min(MAX_ROW_BLOCKS, FUSED_THREADS // threads))
    blocks = max(1, min(-(-rows // gpb), cap))
    groups = blocks * gpb
    niter = -(-rows // groups)
    return blocks, threads, tpr, niter


def elt_launch(n: int) -> tuple[int, int]:
    return max(1, min(-(-n // ELT_BLOCK), MAX_ELT_BLOCKS)), ELT_BLOCK


def channel_elt_launch(n: int, length: int) -> tuple[tuple[int, int], int]:
    """Grid of the per-channel elementwise kernels: 2-D (l blocks, (n, c) rows) when rows are
    at least one block long (the kernels test ``L >= blockDim.x``), else 1-D over the elements."""
    if length >= ELT_BLOCK:
        gx = max(1, min(-(-length // ELT_BLOCK), MAX_ELT_BLOCKS))
        gy = max(1, min(n // length, MAX_ELT_BLOCKS // gx, 65535))
        return (gx, gy), ELT_BLOCK
    return (elt_launch(n)[0], 1), ELT_BLOCK


def slabs(c: int, m: int) -> int:
    """Number of blocks sharing one column (channel) of ``m`` elements in a two-stage reduction."""
    want = max(1, -(-TARGET_RED_BLOCKS // c))
    most = max(1, -(-m // (RED_BLOCK * 4)))
    return max(1, min(want, most, MAX_SLABS))


# ------------------------------------------------------------------ warp primitives
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
    # on the GPU.
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

    def _group_sum(v, sh, tpr, zero):
        with _SIM_SHARED_LOCK:
            buf = cuda.shared.array(1024, np.float64)  # float64 holds float32 values exactly
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        cuda.syncthreads()
        buf[tid] = v
        cuda.syncthreads()
        return _reduce_rows(buf[:nt], tid, tpr, np.asarray(zero).dtype)

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
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        h = _splitmix64(seed ^ _splitmix64(_U(i)))
        keep = 1.0 if (h >> _S40) >= thr else 0.0
        y[i] = np.float64(x[i]) * keep * scale


@cuda.jit
def running_update_kernel(rm, rv, mean, var, nb, nc, momentum, var_correction, out_m, out_v):
    c = cuda.grid(1)
    if c < nc:
        sm = 0.0
        sv = 0.0
        for b in range(nb):
            sm += np.float64(mean[b * nc + c])
            sv += np.float64(var[b * nc + c])
        inv = 1.0 / nb
        out_m[c] = (1.0 - momentum) * np.float64(rm[c]) + momentum * (sm * inv)
        out_v[c] = (1.0 - momentum) * np.float64(rv[c]) + momentum * (sv * inv * var_correction)


# ------------------------------------------------------------------ kernels per accumulator type
_CACHE: dict = {}


class _Kernels:
    pass


def get(acc) -> _Kernels:
    """The kernels accumulating in ``acc`` (``np.float32`` or ``np.float64``), built once."""
    acc = np.dtype(acc).type
    if acc not in _CACHE:
        _CACHE[acc] = _build(acc)
    return _CACHE[acc]


def _build(acc_t):  # noqa: C901 - one closure per kernel, deliberately flat
    k = _Kernels()

    @cuda.jit(device=True, inline=True)
    def _sample(x, i, valid, zero):
        """x[i] in acc precision as the shift of a row's or channel's sums (so a constant one has
        exactly its value as mean and 0 as variance), or 0 where it is not finite (inf - inf
        would make the mean NaN where it is inf) or where the row does not exist."""
        if not valid:
            return zero
        v = acc_t(x[i])
        return v if math.isfinite(v) else zero

    # -------------------------------------------------------------- group view rows
    @cuda.jit
    def group_forward(x, w, b, y, mean_o, var_o, R, M, L, D, G, eps, has_w, has_b, center,
                      tpr, niter):
        sh = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        one = acc_t(1.0)
        tid = cuda.threadIdx.x
        gpb = cuda.blockDim.x // tpr
        gid = cuda.blockIdx.x * gpb + tid // tpr
        ngroups = cuda.gridDim.x * gpb
        lr = tid % tpr
        for it in range(niter):
            r = gid + it * ngroups
            hi = M if r < R else 0
            base = r * M
            mean = zero
            if center:
                k = _sample(x, base, r < R, zero)
                s = zero
                for i in range(lr, hi, tpr):
                    s += acc_t(x[base + i]) - k
                mean = k + _group_sum(s, sh, tpr, zero) / acc_t(M)
            q = zero
            for i in range(lr, hi, tpr):
                dv = acc_t(x[base + i]) - mean
                q += dv * dv
            var = _group_sum(q, sh, tpr, zero) / acc_t(M)
            rstd = one / math.sqrt(var + eps)
            if r < R and lr == 0:
                mean_o[r] = mean
                var_o[r] = var
            wb = (r % G) * D
            for i in range(lr, hi, tpr):
                di = i // L
                sc = rstd
                sf = zero
                if has_w:
                    sc = sc * acc_t(w[wb + di])
                if has_b:
                    sf = acc_t(b[wb + di])
                y[base + i] = (acc_t(x[base + i]) - mean) * sc + sf

    @cuda.jit
    def group_backward(dy, x, mean, var, w, dx, pw, pb, R, M, L, D, G, eps, has_w, center,
                       fuse, tpr, niter):
        sh = cuda.shared.array(32, acc_t)
        sh2 = cuda.shared.array(32, acc_t)
        lw = cuda.local.array(LOCAL_COLS, acc_t)
        lb = cuda.local.array(LOCAL_COLS, acc_t)
        zero = acc_t(0.0)
        one = acc_t(1.0)
        tid = cuda.threadIdx.x
        gpb = cuda.blockDim.x // tpr
        gid = cuda.blockIdx.x * gpb + tid // tpr
        ngroups = cuda.gridDim.x * gpb
        lr = tid % tpr
        inv_m = one / acc_t(M)
        if fuse:
            for j in range(LOCAL_COLS):
                lw[j] = zero
                lb[j] = zero
        for it in range(niter):
            r = gid + it * ngroups
            valid = r < R
            hi = M if valid else 0
            base = r * M
            mu = zero
            rstd = one
            if valid:
                if center:
                    mu = acc_t(mean[r])
                rstd = one / math.sqrt(acc_t(var[r]) + eps)
            wb = (r % G) * D
            s1 = zero
            s2 = zero
            for i in range(lr, hi, tpr):
                xh = (acc_t(x[base + i]) - mu) * rstd
                gv = acc_t(dy[base + i])
                if has_w:
                    gv = gv * acc_t(w[wb + i // L])
                s1 += gv
                s2 += gv * xh
            s1, s2 = _group_sum2(s1, s2, sh, sh2, tpr, zero)
            c2 = s2 * inv_m
            c1 = zero
            if center:
                c1 = s1 * inv_m
            j = 0
            for i in range(lr, hi, tpr):
                xh = (acc_t(x[base + i]) - mu) * rstd
                dyv = acc_t(dy[base + i])
                gv = dyv
                if has_w:
                    gv = gv * acc_t(w[wb + i // L])
                dx[base + i] = rstd * (gv - c1 - xh * c2)
                if fuse:
                    # L == 1 and G == 1: column i is owned by this thread of this row group
                    lw[j] += dyv * xh
                    lb[j] += dyv
                j += 1
        if fuse:
            j = 0
            for i in range(lr, M, tpr):
                pw[gid * M + i] = lw[j]
                pb[gid * M + i] = lb[j]
                j += 1

    @cuda.jit
    def column_sum(pw, pb, P, C, dw, db):
        """dw[c] = sum_p pw[p, c], db likewise; one thread per column, fixed order."""
        c = cuda.grid(1)
        if c < C:
            sw = acc_t(0.0)
            sb = acc_t(0.0)
            for p in range(P):
                sw += acc_t(pw[p * C + c])
                sb += acc_t(pb[p * C + c])
            dw[c] = sw
            db[c] = sb

    @cuda.jit
    def group_wb_partials(dy, x, mean, var, N, C, L, D, G, eps, center, S, pw, pb):
        """Stage 1 of dweight/dbias of the group view seen as channels c = (g, d): block (c, s)."""
        sh = cuda.shared.array(32, acc_t)
        sh2 = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        one = acc_t(1.0)
        c = cuda.blockIdx.x
        s = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        total = N * L
        per = (total + S - 1) // S
        lo = s * per
        hi = min(total, lo + per)
        g = c // D
        aw = zero
        ab = zero
        if L >= T:  # whole (n, c) rows: no per-element index division, stats once per row
            for n in range(lo // L, (hi + L - 1) // L):
                rb = n * L
                base = (n * C + c) * L
                r = n * G + g
                mu = zero
                if center:
                    mu = acc_t(mean[r])
                rstd = one / math.sqrt(acc_t(var[r]) + eps)
                for l_ in range(max(lo - rb, 0) + tid, min(hi - rb, L), T):
                    dyv = acc_t(dy[base + l_])
                    aw += dyv * (acc_t(x[base + l_]) - mu) * rstd
                    ab += dyv
        else:
            for k_ in range(lo + tid, hi, T):
                n = k_ // L
                idx = (n * C + c) * L + k_ - n * L
                r = n * G + g
                mu = zero
                if center:
                    mu = acc_t(mean[r])
                rstd = one / math.sqrt(acc_t(var[r]) + eps)
                dyv = acc_t(dy[idx])
                aw += dyv * (acc_t(x[idx]) - mu) * rstd
                ab += dyv
        aw, ab = _group_sum2(aw, ab, sh, sh2, T, zero)
        if tid == 0:
            pw[s * C + c] = aw
            pb[s * C + c] = ab

    # -------------------------------------------------------------- weight standardization rows
    @cuda.jit
    def rows_forward(x, y, mean_o, denom_o, R, K, nd, eps, eps_in_root, tpr, niter):
        sh = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        one = acc_t(1.0)
        tid = cuda.threadIdx.x
        gpb = cuda.blockDim.x // tpr
        gid = cuda.blockIdx.x * gpb + tid // tpr
        ngroups = cuda.gridDim.x * gpb
        lr = tid % tpr
        for it in range(niter):
            r = gid + it * ngroups
            hi = K if r < R else 0
            base = r * K
            k = _sample(x, base, r < R, zero)
            s = zero
            for i in range(lr, hi, tpr):
                s += acc_t(x[base + i]) - k
            mean = k + _group_sum(s, sh, tpr, zero) / acc_t(K)
            q = zero
            for i in range(lr, hi, tpr):
                dv = acc_t(x[base + i]) - mean
                q += dv * dv
            v = _group_sum(q, sh, tpr, zero) / nd
            if eps_in_root:
                den = math.sqrt(v + eps)
            else:
                den = math.sqrt(v) + eps
            if r < R and lr == 0:
                mean_o[r] = mean
                denom_o[r] = den
            inv = one / den
            for i in range(lr, hi, tpr):
                y[base + i] = (acc_t(x[base + i]) - mean) * inv

    @cuda.jit
    def rows_backward(dy, x, mean, denom, dx, R, K, nd, eps_in_root, tpr, niter):
        sh = cuda.shared.array(32, acc_t)
        sh2 = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        one = acc_t(1.0)
        tid = cuda.threadIdx.x
        gpb = cuda.blockDim.x // tpr
        gid = cuda.blockIdx.x * gpb + tid // tpr
        ngroups = cuda.gridDim.x * gpb
        lr = tid % tpr
        inv_k = one / acc_t(K)
        for it in range(niter):
            r = gid + it * ngroups
            valid = r < R
            hi = K if valid else 0
            base = r * K
            mu = zero
            d = one
            if valid:
                mu = acc_t(mean[r])
                d = acc_t(denom[r])
            sdy = zero
            sdc = zero
            scc = zero
            for i in range(lr, hi, tpr):
                cv = acc_t(x[base + i]) - mu
                dyv = acc_t(dy[base + i])
                sdy += dyv
                sdc += dyv * cv
                scc += cv * cv
            sdy, sdc = _group_sum2(sdy, sdc, sh, sh2, tpr, zero)
            coef = zero
            if eps_in_root:
                coef = sdc / (nd * d * d * d)
            else:
                scc = _group_sum(scc, sh, tpr, zero)
                root = math.sqrt(scc / nd)
                if root > zero:
                    coef = sdc / (nd * root * d * d)
            mdy = sdy * inv_k
            inv_d = one / d
            for i in range(lr, hi, tpr):
                cv = acc_t(x[base + i]) - mu
                dx[base + i] = (acc_t(dy[base + i]) - mdy) * inv_d - cv * coef

    # -------------------------------------------------------------- channel view (N, C, L)
    @cuda.jit
    def channel_partials(x, N, C, L, S, ps, pq):
        """Stage 1 of channel moments: block (c, s) -> shifted sum and sum of squares."""
        sh = cuda.shared.array(32, acc_t)
        sh2 = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        c = cuda.blockIdx.x
        s = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        total = N * L
        per = (total + S - 1) // S
        lo = s * per
        hi = min(total, lo + per)
        shift = _sample(x, c * L, True, zero)
        a = zero
        q = zero
        if L >= T:  # whole (n, c) rows: no per-element index division
            for n in range(lo // L, (hi + L - 1) // L):
                rb = n * L
                base = (n * C + c) * L
                for l_ in range(max(lo - rb, 0) + tid, min(hi - rb, L), T):
                    v = acc_t(x[base + l_]) - shift
                    a += v
                    q += v * v
        else:
            for k_ in range(lo + tid, hi, T):
                n = k_ // L
                v = acc_t(x[(n * C + c) * L + k_ - n * L]) - shift
                a += v
                q += v * v
        a, q = _group_sum2(a, q, sh, sh2, T, zero)
        if tid == 0:
            ps[s * C + c] = a
            pq[s * C + c] = q

    @cuda.jit
    def channel_finish(x, ps, pq, S, C, L, M, mean_o, var_o):
        """Stage 2 of channel moments: merge the S partials of each channel, fixed order."""
        c = cuda.grid(1)
        if c < C:
            a = acc_t(0.0)
            q = acc_t(0.0)
            for s in range(S):
                a += ps[s * C + c]
                q += pq[s * C + c]
            inv = acc_t(1.0) / acc_t(M)
            ma = a * inv
            v = q * inv - ma * ma
            if v < acc_t(0.0):
                v = acc_t(0.0)
            mean_o[c] = _sample(x, c * L, True, acc_t(0.0)) + ma
            var_o[c] = v

    @cuda.jit
    def channel_fold(mean, var, w, b, eps, has_w, has_b, C, scale, shift):
        c = cuda.grid(1)
        if c < C:
            sc = acc_t(1.0) / math.sqrt(acc_t(var[c]) + eps)
            if has_w:
                sc = sc * acc_t(w[c])
            sf = -acc_t(mean[c]) * sc
            if has_b:
                sf = sf + acc_t(b[c])
            scale[c] = sc
            shift[c] = sf

    @cuda.jit
    def channel_apply(x, y, scale, shift, n, C, L):
        T = cuda.blockDim.x
        if L >= T:  # 2-D grid: (n, c) rows along y, l along x; no per-element division
            for row in range(cuda.blockIdx.y, n // L, cuda.gridDim.y):
                c = row % C
                sc = scale[c]
                sf = shift[c]
                base = row * L
                for l_ in range(cuda.blockIdx.x * T + cuda.threadIdx.x, L, T * cuda.gridDim.x):
                    y[base + l_] = acc_t(x[base + l_]) * sc + sf
        else:
            start = (cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x) * T + cuda.threadIdx.x
            stride = T * cuda.gridDim.x * cuda.gridDim.y
            for i in range(start, n, stride):
                c = (i // L) % C
                y[i] = acc_t(x[i]) * scale[c] + shift[c]

    @cuda.jit
    def channel_bwd_partials(dy, x, mean, N, C, L, S, pw, pb):
        """Stage 1 of BatchNorm backward: block (c, s) -> sum(dy * (x - mean)) and sum(dy)."""
        sh = cuda.shared.array(32, acc_t)
        sh2 = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        c = cuda.blockIdx.x
        s = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        total = N * L
        per = (total + S - 1) // S
        lo = s * per
        hi = min(total, lo + per)
        mu = acc_t(mean[c])
        aw = zero
        ab = zero
        if L >= T:  # whole (n, c) rows: no per-element index division
            for n in range(lo // L, (hi + L - 1) // L):
                rb = n * L
                base = (n * C + c) * L
                for l_ in range(max(lo - rb, 0) + tid, min(hi - rb, L), T):
                    dyv = acc_t(dy[base + l_])
                    aw += dyv * (acc_t(x[base + l_]) - mu)
                    ab += dyv
        else:
            for k_ in range(lo + tid, hi, T):
                n = k_ // L
                idx = (n * C + c) * L + k_ - n * L
                dyv = acc_t(dy[idx])
                aw += dyv * (acc_t(x[idx]) - mu)
                ab += dyv
        aw, ab = _group_sum2(aw, ab, sh, sh2, T, zero)
        if tid == 0:
            pw[s * C + c] = aw
            pb[s * C + c] = ab

    @cuda.jit
    def channel_bwd_finish(pw, pb, S, C, M, mean, var, w, eps, has_w, batch_stats,
                           dw_o, db_o, k1, k2, k3):
        """Stage 2: dweight/dbias and per-channel dx = k1*dy - k2 - (x - mean)*k3."""
        c = cuda.grid(1)
        if c < C:
            zero = acc_t(0.0)
            one = acc_t(1.0)
            sw = zero
            sb = zero
            for s in range(S):
                sw += pw[s * C + c]
                sb += pb[s * C + c]
            rstd = one / math.sqrt(acc_t(var[c]) + eps)
            dwv = sw * rstd
            dw_o[c] = dwv
            db_o[c] = sb
            wv = one
            if has_w:
                wv = acc_t(w[c])
            k1[c] = rstd * wv
            if batch_stats:
                inv = one / acc_t(M)
                k2[c] = rstd * wv * sb * inv
                k3[c] = rstd * rstd * wv * dwv * inv
            else:
                k2[c] = zero
                k3[c] = zero

    @cuda.jit
    def channel_bwd_apply(dy, x, mean, k1, k2, k3, dx, n, C, L):
        T = cuda.blockDim.x
        if L >= T:  # 2-D grid as in channel_apply
            for row in range(cuda.blockIdx.y, n // L, cuda.gridDim.y):
                c = row % C
                a1 = k1[c]
                a2 = k2[c]
                a3 = k3[c]
                mu = acc_t(mean[c])
                base = row * L
                for l_ in range(cuda.blockIdx.x * T + cuda.threadIdx.x, L, T * cuda.gridDim.x):
                    i = base + l_
                    dx[i] = acc_t(dy[i]) * a1 - a2 - (acc_t(x[i]) - mu) * a3
        else:
            start = (cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x) * T + cuda.threadIdx.x
            stride = T * cuda.gridDim.x * cuda.gridDim.y
            for i in range(start, n, stride):
                c = (i // L) % C
                dx[i] = acc_t(dy[i]) * k1[c] - k2[c] - (acc_t(x[i]) - acc_t(mean[c])) * k3[c]

    for name, obj in list(locals().items()):
        if name not in ("k", "acc_t"):
            setattr(k, name, obj)
    return k
