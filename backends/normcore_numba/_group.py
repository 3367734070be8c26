"""Group-view kernels (LayerNorm, GroupNorm, InstanceNorm, RMSNorm): x4 of shape (N, G, D, L),
statistics per (n, g) "row" over (D, L), affine weight/bias of shape (G, D).

Bandwidth accounting per element (s = itemsize), the floor being a copy (2s):

* forward:   read x (stats), read x again (normalize), write y  -> 3s in DRAM terms only when a
             row does not fit in cache; a row (e.g. 1024..4096 floats) is re-read from L1/L2, so
             DRAM traffic is 2s, the same as a copy.
* backward:  read x, dy (row sums), read them again from cache, write dx -> 3s in DRAM terms.
             dweight/dbias (sums over (n, l)) are accumulated while the row is in cache.
             For L == 1 the map that writes row r's dx also sums row r + 1 (pipelined like the
             forward), and the column sums of dweight/dbias run over tiles of rows
             (``_columns.vcols``). Measured A/B, LayerNorm float32 backward, 2 threads, one
             process: (8192, 1024) 2.9 -> 2.5 ms, (4096, 4096) 5.8 -> 4.7 ms, RMSNorm (8192, 1024)
             3.2 -> 2.4 ms; most of it the column sums (added into float64 partials row by row
             they took a third of the pass) and float32 lanes for float32 rows.

Measured on GroupNorm(32) (16, 256, 32, 32) float32, 2 threads: the statistics alone (a read of
x) take ~120 us, the normalize map alone (read x, write y) about a copy (~280 us), and the fused
forward ~420 us: their sum, although its memory traffic is a copy's. Software prefetch of the
row after next (2 or 3 rows ahead) made it 8-30% slower; float32 arithmetic in the maps changed
nothing (see _vmap).

Rows are split into one fixed contiguous block per thread (``_blocks.parallel_blocks``): the
partition only depends on the thread count, so results are deterministic. dweight/dbias of
LayerNorm is a column reduction over all rows: every block walks its rows g-major (consecutive n
of one g form a tile) and accumulates into its own (G, D) float64 partial array (no shared
writes across blocks); the (blocks, G, D) partials are summed in block order afterwards.

Two loop nests: ``*3`` for L == 1 (LayerNorm, RMSNorm: view (N, G, D), D innermost so the
weight vector streams along with x) and ``*4`` for L > 1 (GroupNorm/InstanceNorm, L innermost
with a per-d scalar scale). The output pass folds mean, rstd, weight and bias into one scale and
shift per (row, d) so it is one multiply-add stream computed in float64 and rounded once.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit

from ._blocks import parallel_blocks
from ._columns import TILE, vcols
from ._common import (
    HELPER,
    affine_row,
    affine_row_sums,
    all_set,
    borrow,
    dot2_centered,
    empty,
    finite,
    grad_row,
    gradw_row_sums,
    nonneg,
    norm_row,
    norm_row_sums,
    sample_shift,
    sums_shifted,
    wdot2_centered,
)
from ._vmap import store_fence

#: The fingerprint of the package's compiled code (see _fingerprint): in this file, so
#: that numba's disk cache drops these kernels whenever any of that code changes.
CODE_SHA256 = "6adc431478b936b911208132f5a59a11b8b1334d36670d322a76640b09a89b74"


@njit(inline="always", **HELPER)
def _moments(s1, s2, k, m, center):
    """(mean, biased variance) from sums shifted by k; RMS (not center): (0, mean of squares)."""
    if center:
        m1 = s1 / m
        return k + m1, nonneg(s2 / m - m1 * m1)
    return 0.0, s2 / m


@njit(inline="always", **HELPER)
def _fwd3_body(blk, a):
    x, w, b, eps, center, y, nblk, stream, mean, var, ok = a
    n_, g_, d_ = x.shape
    rows = n_ * g_
    r0 = blk * rows // nblk
    r1 = (blk + 1) * rows // nblk
    fin = True
    if r0 < r1:
        n = r0 // g_
        g = r0 - n * g_
        k = sample_shift(x[n, g, 0]) if center else 0.0
        s1, s2 = sums_shifted(x[n, g], k)
        for r in range(r0, r1):
            n = r // g_
            g = r - n * g_
            mu, v = _moments(s1, s2, k, d_, center)
            mean[n, g] = mu
            var[n, g] = v
            fin = fin and finite(mu, v)
            rstd = 1.0 / math.sqrt(v + eps)
            if r + 1 < r1:
                nn = (r + 1) // g_
                ng = r + 1 - nn * g_
                k = sample_shift(x[nn, ng, 0]) if center else 0.0
                s1, s2 = norm_row_sums(x[n, g], y[n, g], w[g], b[g], mu, rstd, stream,
                                       x[nn, ng], k)
            else:
                norm_row(x[n, g], y[n, g], w[g], b[g], mu, rstd, stream)
        if stream:
            store_fence()
    ok[blk] = fin


@njit(**HELPER)
def fwd3(x, w, b, eps, center, y, nblk, stream):
    """Each block sums its first row, then normalizes row r in the same loop that sums row r + 1
    (the pipelined pass: reads and writes stream together, see _vmap._NextRowSums). Returns
    (mean, var, whether every statistic is finite: see _common.finite)."""
    x, w, b, y = borrow((x, w, b, y))
    n_, g_, _ = x.shape
    mean = empty((n_, g_), np.float64)
    var = empty((n_, g_), np.float64)
    ok = empty(nblk, np.uint8)
    parallel_blocks(_fwd3_body, nblk, (x, w, b, eps, center, y, nblk, stream, mean, var, ok))
    return mean, var, all_set(ok)


@njit(inline="always", **HELPER)
def _finite_rows(mean, var):
    """Whether every row's statistics are finite (see _common.finite), checked after the blocks:
    a flag written at the end of _fwd4_body was lost (the block's code after its loop never
    ran; one pass over the (N, G) statistics costs next to nothing)."""
    for n in range(mean.shape[0]):
        for g in range(mean.shape[1]):
            if not finite(mean[n, g], var[n, g]):
                return False
    return True


@njit(inline="always", **HELPER)
def _fwd4_body(blk, a):
    x, w, b, eps, center, y, nblk, stream, mean, var = a
    n_, g_, d_, l_ = x.shape
    rows = n_ * g_
    m_ = d_ * l_
    r0 = blk * rows // nblk
    r1 = (blk + 1) * rows // nblk
    if r0 < r1:
        n = r0 // g_
        g = r0 - n * g_
        k = sample_shift(x[n, g, 0, 0]) if center else 0.0
        s1 = 0.0
        s2 = 0.0
        for d in range(d_):
            a1, a2 = sums_shifted(x[n, g, d], k)
            s1 += a1
            s2 += a2
        for r in range(r0, r1):
            n = r // g_
            g = r - n * g_
            mu, v = _moments(s1, s2, k, m_, center)
            mean[n, g] = mu
            var[n, g] = v
            rstd = 1.0 / math.sqrt(v + eps)
            last = r + 1 == r1
            nn = (r + 1) // g_
            ng = r + 1 - nn * g_
            if not last:
                k = sample_shift(x[nn, ng, 0, 0]) if center else 0.0
            s1 = 0.0
            s2 = 0.0
            for d in range(d_):
                sc = rstd * w[g, d]
                if last:
                    affine_row(x[n, g, d], y[n, g, d], mu, sc, b[g, d], stream)
                else:
                    a1, a2 = affine_row_sums(x[n, g, d], y[n, g, d], mu, sc, b[g, d], stream,
                                             x[nn, ng, d], k)
                    s1 += a1
                    s2 += a2
        if stream:
            store_fence()


@njit(**HELPER)
def fwd4(x, w, b, eps, center, y, nblk, stream):
    """fwd3 for L > 1: a row is D lines of L with one scale and shift per line."""
    x, w, b, y = borrow((x, w, b, y))
    n_, g_ = x.shape[0], x.shape[1]
    mean = empty((n_, g_), np.float64)
    var = empty((n_, g_), np.float64)
    parallel_blocks(_fwd4_body, nblk, (x, w, b, eps, center, y, nblk, stream, mean, var))
    return mean, var, _finite_rows(mean, var)


@njit(inline="always", **HELPER)
def _n_from(r, g, g_):
    """The first n with n * G + g >= r (for r >= 0 and 0 <= g < G)."""
    return (r - g + g_ - 1) // g_


@njit(inline="always", **HELPER)
def _next_row(n, g, g_, r0, r1):
    """The row after (n, g) in a block's g-major walk of its rows r0 <= n * G + g < r1: (n + 1, g),
    else the first row of the next group that has rows there; (-1, -1) after the last."""
    if n + 1 < _n_from(r1, g, g_):
        return n + 1, g
    for h in range(g + 1, g_):
        h0 = _n_from(r0, h, g_)
        if h0 < _n_from(r1, h, g_):
            return h0, h
    return -1, -1


@njit(inline="always", **HELPER)
def _bwd3_body(blk, a):
    dy, x, mean, var, eps, w, center, dx, pw, pb, stream, ok = a
    n_, g_, d_ = x.shape
    rows = n_ * g_
    nblk = pw.shape[0]
    fin = True
    r0 = blk * rows // nblk
    r1 = (blk + 1) * rows // nblk
    # rows in g-major order, TILE consecutive n of one g at a time. Each row's dx map also sums
    # the next row (the pipelined pass, as in the forward); after a tile's dx, its column sums go
    # onto this block's own (G, D) partials (no element shared with another block; zeroed by the
    # caller) while its rows are in cache
    started = False
    sg = 0.0
    sgx = 0.0
    for g in range(g_):
        n1 = _n_from(r1, g, g_)
        for t0 in range(_n_from(r0, g, g_), n1, TILE):
            t1 = min(t0 + TILE, n1)
            for n in range(t0, t1):
                mu = numba.float64(mean[n, g])
                if not started:
                    sg, sgx = wdot2_centered(dy[n, g], x[n, g], w[g], mu)
                    started = True
                fin = fin and finite(sg, sgx)
                rstd = 1.0 / math.sqrt(numba.float64(var[n, g]) + eps)
                a2 = rstd * rstd * sgx / d_
                a3 = sg / d_ if center else 0.0
                # the block's last row sums itself again (from cache; unused): one map to compile
                nn, ng = _next_row(n, g, g_, r0, r1)
                if nn < 0:
                    nn, ng = n, g
                sg, sgx = gradw_row_sums(dy[n, g], x[n, g], w[g], dx[n, g], rstd, a2, mu, a3,
                                         stream, dy[nn, ng], x[nn, ng], w[ng],
                                         numba.float64(mean[nn, ng]))
            vcols(dy[t0:t1, g], x[t0:t1, g], mean[t0:t1, g], var[t0:t1, g], eps, pw[blk, g],
                  pb[blk, g])
    if stream:
        store_fence()
    ok[blk] = fin


@njit(**HELPER)
def bwd3(dy, x, mean, var, eps, w, center, dx, pw, pb, stream):
    """dx into dx, dweight/dbias partials into pw/pb; returns whether every row's sums are
    finite (see _common.finite)."""
    dy, x, w, dx = borrow((dy, x, w, dx))
    ok = empty(pw.shape[0], np.uint8)
    parallel_blocks(_bwd3_body, pw.shape[0], (dy, x, mean, var, eps, w, center, dx, pw, pb, stream,
                                              ok))
    return all_set(ok)


@njit(inline="always", **HELPER)
def _bwd4_body(blk, a):
    dy, x, mean, var, eps, w, center, dx, pw, pb, stream, ok = a
    n_, g_, d_, l_ = x.shape
    rows = n_ * g_
    m_ = d_ * l_
    nblk = pw.shape[0]
    for r in range(blk * rows // nblk, (blk + 1) * rows // nblk):
        n = r // g_
        g = r - n * g_
        mu = numba.float64(mean[n, g])
        rstd = 1.0 / math.sqrt(numba.float64(var[n, g]) + eps)
        sg = 0.0
        sgx = 0.0
        for d in range(d_):
            a1, a2 = dot2_centered(dy[n, g, d], x[n, g, d], mu)
            pb[blk, g, d] += a1
            pw[blk, g, d] += a2 * rstd
            sg += w[g, d] * a1
            sgx += w[g, d] * a2
        ok[n, g] = finite(sg, sgx)  # per row: see _finite_rows
        k2 = rstd * rstd * rstd * sgx / m_
        k3 = rstd * sg / m_ if center else 0.0
        for d in range(d_):
            grad_row(dy[n, g, d], x[n, g, d], dx[n, g, d], rstd * w[g, d], k2, mu, k3, stream)
    if stream:
        store_fence()


@njit(**HELPER)
def bwd4(dy, x, mean, var, eps, w, center, dx, pw, pb, stream):
    """bwd3 for L > 1 (returns the same flag, from a flag per row: see _finite_rows)."""
    dy, x, w, dx = borrow((dy, x, w, dx))
    ok = empty((x.shape[0], x.shape[1]), np.uint8)
    parallel_blocks(_bwd4_body, pw.shape[0], (dy, x, mean, var, eps, w, center, dx, pw, pb, stream,
                                              ok))
    return all_set(ok.reshape(ok.size))
