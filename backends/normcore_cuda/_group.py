"""Group-view kernels of the numba-cuda backend: GroupNorm, LayerNorm, InstanceNorm, RMSNorm.

The canonical view is ``(N, G, D, L)``: ``R = N*G`` rows of ``M = D*L`` contiguous elements,
weight and bias of ``G*D`` elements indexed by ``(g, d)``. Each row belongs to a *row group* of
``tpr`` threads (a warp, or a whole block for long rows: :func:`normcore_cuda._launch.row_launch`);
a fixed grid of row groups strides over the rows, ``niter`` rows each.
"""

from __future__ import annotations

import math

from numba import cuda

from ._launch import LOCAL_COLS
from ._reduce import _group_sum, _group_sum2, row_group, shift_sample, slab


def build(acc_t) -> dict:
    """The group-view kernels accumulating in ``acc_t``, by name."""
    _sample = shift_sample(acc_t)

    @cuda.jit
    def group_forward(x, w, b, y, mean_o, var_o, R, M, L, D, G, eps, has_w, has_b, center,
                      tpr, niter):
        """Forward of the group view: ``y``, and each row's ``mean`` and ``var`` (biased).

        A row group of ``tpr`` threads takes row ``r``; thread ``lr`` of it strides the row by ``tpr``.
        Pass 1 (``center``) sums ``x - k`` about a sample ``k`` of the row -> ``mean``; pass 2 sums
        ``(x - mean)**2`` -> ``var`` (each sum: :func:`_group_sum`, every thread gets it; rows past
        ``R`` take part with no elements, so that every thread reaches the reductions); pass 3 writes
        ``y = (x - mean) * (rstd * w[g, d]) + b[g, d]``, ``d = i // L``. Thread 0 of the group writes
        the row's statistics.

        Traffic: ``x`` read three times (twice without ``center``), ``y`` written once, two statistics
        a row; the re-reads are of the row the same threads just read (L1/L2 while it fits there), and
        ``w``/``b`` (``G*D`` elements) stay in cache.
        """
        sh = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        one = acc_t(1.0)
        gid, ngroups, lr = row_group(tpr)
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
        """Backward of the group view: ``dx``, and (``fuse``) per-row-group partials of dweight/dbias.

        Row group and striding as in ``group_forward``. Pass 1 sums ``g = dy * w`` and ``g * xhat``
        over the row (:func:`_group_sum2`, one exchange for both); pass 2 writes
        ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` (``mean(g)`` only with ``center``).
        ``fuse`` (LayerNorm-like views, ``L == 1`` and ``G == 1``, at most ``LOCAL_COLS`` elements a
        thread): a thread owns the same columns in every row it handles, so it accumulates their
        ``dy * xhat`` and ``dy`` in registers (``lw``, ``lb``) over all its rows and writes them once, to
        row ``gid`` of ``pw``/``pb``; ``column_sum`` finishes them. Otherwise dweight/dbias come from
        ``group_wb_partials``.

        Traffic: ``dy`` and ``x`` read twice each (the second time from cache while the row fits),
        ``dx`` written once, two statistics a row read; fused: ``2 * groups * M`` partials written
        (the grid is about one wave, see ``FUSED_THREADS``).
        """
        sh = cuda.shared.array(32, acc_t)
        sh2 = cuda.shared.array(32, acc_t)
        lw = cuda.local.array(LOCAL_COLS, acc_t)
        lb = cuda.local.array(LOCAL_COLS, acc_t)
        zero = acc_t(0.0)
        one = acc_t(1.0)
        gid, ngroups, lr = row_group(tpr)
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
        """``dw[c] = sum_p pw[p, c]``, ``db`` likewise: the finish of the dweight/dbias partials.

        One thread a column, summing its ``P`` partials in order in acc precision (deterministic).
        Traffic: ``2 * P * C`` partials read (coalesced: neighbouring threads read neighbouring
        columns), ``2 * C`` written.
        """
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
        """Stage 1 of dweight/dbias of the group view seen as channels ``c = (g, d)``: block ``(c, s)``.

        Block ``(c, s)`` reduces slab ``s`` of the ``N*L`` elements ``(n, l)`` of column ``c``: its
        threads stride the slab accumulating ``dy * xhat`` and ``dy`` (``xhat`` from the statistics of
        row ``(n, g)``), the block sums them (:func:`_group_sum2` over the whole block) and thread 0
        writes partial ``(s, c)``. When ``L`` is at least a block, the slab is walked run by run of ``L``
        contiguous elements (statistics once a run, no index division per element).

        Traffic: ``dy`` and ``x`` read once more, ``2 * S * C`` partials written (``column_sum``
        finishes them).
        """
        sh = cuda.shared.array(32, acc_t)
        sh2 = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        one = acc_t(1.0)
        c = cuda.blockIdx.x
        s = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        T = cuda.blockDim.x
        lo, hi = slab(N * L, S, s)
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

    return {"group_forward": group_forward, "group_backward": group_backward,
            "column_sum": column_sum, "group_wb_partials": group_wb_partials}
