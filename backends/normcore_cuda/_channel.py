"""Channel-view kernels of the numba-cuda backend: BatchNorm statistics, normalization and
backward over the canonical view ``(N, C, L)``, and the running-statistics update.

A channel's ``N*L`` elements are ``N`` strided runs of ``L``. Statistics are a two-stage column
reduction: stage 1 is a grid of ``(C, S)`` blocks, block ``(c, s)`` reducing slab ``s`` of
channel ``c`` (``S`` slabs: :func:`normcore_cuda._launch.slabs`) to one partial; stage 2 is one
thread a channel merging its ``S`` partials in a fixed order. No atomics, no full-size
temporaries, deterministic. The elementwise kernels run on a 2-D grid (blocks along ``l``, ``(n,
c)`` rows along y) when rows are at least a block long, else a 1-D grid over the elements
(:func:`normcore_cuda._launch.channel_elt_launch`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ._reduce import _group_sum2, shift_sample, slab


def build(acc_t) -> dict:
    """The channel-view kernels accumulating in ``acc_t``, by name."""
    _sample = shift_sample(acc_t)

    @cuda.jit
    def channel_partials(x, N, C, L, S, ps, pq):
        """Stage 1 of channel moments: block ``(c, s)`` -> shifted sum and sum of squares of a slab.

        Block ``(c, s)`` reduces slab ``s`` of the ``N*L`` elements ``(n, l)`` of channel ``c``: its
        threads stride the slab accumulating ``v = x - shift`` and ``v * v`` (``shift`` a sample of the
        channel: its first element), the block sums them (:func:`_group_sum2` over the whole block)
        and thread 0 writes partial ``(s, c)``. When ``L`` is at least a block, the slab is walked run
        by run of ``L`` contiguous elements (no index division per element).

        Traffic: ``x`` read once, ``2 * S * C`` partials written.
        """
        sh = cuda.shared.array(32, acc_t)
        sh2 = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        c = cuda.blockIdx.x
        s = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        lo, hi = slab(N * L, S, s)
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
        """Stage 2 of channel moments: merge the ``S`` partials of each channel, in a fixed order.

        One thread a channel: ``mean = shift + a / M``, ``var = q / M - (a / M)**2`` (clamped at 0).
        Traffic: ``2 * S * C`` partials and one sample of each channel read, ``2 * C`` written.
        """
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
        """Per-channel ``scale = w * rstd`` and ``shift = b - mean * scale`` for ``channel_apply``.

        One thread a channel; ``C``-sized reads and writes only.
        """
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
        """``y = x * scale[c] + shift[c]``: the channel normalization, elementwise.

        2-D grid (``L`` at least a block): block rows stride the ``(n, c)`` runs, each reading its
        channel's two coefficients once, and the blocks along x stride ``l``; else a 1-D grid-stride
        loop over the elements with ``c = (i // L) % C``.

        Traffic: ``x`` read once, ``y`` written once (the forward in all: ``x`` read twice, with
        ``channel_partials``).
        """
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
        """Stage 1 of BatchNorm backward: block ``(c, s)`` -> ``sum(dy * (x - mean))`` and ``sum(dy)``.

        Slabs, striding and the block sum as in ``channel_partials``. Traffic: ``dy`` and ``x`` read
        once, ``2 * S * C`` partials written.
        """
        sh = cuda.shared.array(32, acc_t)
        sh2 = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        c = cuda.blockIdx.x
        s = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        lo, hi = slab(N * L, S, s)
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
        """Stage 2: dweight/dbias and per-channel dx = k1*dy - k2 - (x - mean)*k3.

        One thread a channel, merging its ``S`` partials in order: ``dweight = sum(dy * xhat)``,
        ``dbias = sum(dy)``, ``k1 = rstd * w``; with batch statistics ``k2 = k1 * dbias / M`` and
        ``k3 = rstd * k1 * dweight / M`` (gradient through the mean and variance), else 0.
        Traffic: ``2 * S * C`` partials read, ``5 * C`` written.
        """
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
        """``dx = dy * k1[c] - k2[c] - (x - mean[c]) * k3[c]``, elementwise.

        Grids as in ``channel_apply``. Traffic: ``dy`` and ``x`` read once, ``dx`` written once (the
        backward in all: ``dy`` and ``x`` read twice, with ``channel_bwd_partials``).
        """
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


    return {"channel_partials": channel_partials, "channel_finish": channel_finish,
            "channel_fold": channel_fold, "channel_apply": channel_apply,
            "channel_bwd_partials": channel_bwd_partials,
            "channel_bwd_finish": channel_bwd_finish, "channel_bwd_apply": channel_bwd_apply}


@cuda.jit
def running_update_kernel(rm, rv, mean, var, nb, nc, momentum, var_correction, out_m, out_v):
    """``running = (1 - momentum) * running + momentum * batch`` for BatchNorm's running statistics.

    One thread a channel, in float64: ``batch`` is the average over the ``nb`` rows of
    ``mean``/``var`` (``(nb, C)``, or one row), the variance times ``var_correction``. Traffic:
    ``2 * (nb + 1) * C`` read, ``2 * C`` written.
    """
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
