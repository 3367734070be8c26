"""Group-view kernels (LayerNorm, RMSNorm, GroupNorm, InstanceNorm): statistics per (n, g) row
of x4 (N, G, D, L) over (D, L); affine weight and bias per (g, d).

Two layouts (``_plan``): ``flat`` takes rows of M contiguous elements with a weight per position,
(N, G, M) with w and b (G, M) (LayerNorm: (rows, 1, K); GroupNorm with a short L: the weight
repeated along L); ``lines`` takes D lines of L per row with one scale per line (GroupNorm,
InstanceNorm on feature maps).

Bandwidth accounting per element (s = itemsize), the floor being a copy (2s):

* forward:  read x (sums), read the row again (from cache: rows are short), write y -> 2s
  from memory. Sums about a sample of the row (its first element; 0 for RMS), float64. A
  block's rows go in order, and one loop writes row r while it sums row r + 1: the read stream
  of the next row overlaps the write stream of this one.
* backward: read dy, x (row sums), read them again from cache, write dx -> 3s from memory.
  dweight/dbias are column sums over the rows (LayerNorm: a (K,) sum over every row). Each block
  adds into a (G, M) float64 partial of its own, merged in block order after the loop; in the
  ``flat`` layout a block walks its rows group-major, four rows of one group at a time: one pass
  sums the four rows' sums and their dweight/dbias terms (one partial read-modify-write per four
  rows: added row by row, the partials took a third of the pass), a second writes their dx.

Every ``@njit`` function these kernels compile lives in this file or in ``_shared`` (see
``_jit`` on the cache).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import helper, inline, kernel
from ._shared import dot, shift, sums


@inline
def _moments(s1, s2, k, m, center):
    """(mean, biased var) from sums shifted by k; RMS: (0, mean of squares)."""
    if center:
        m1 = s1 / m
        v = s2 / m - m1 * m1
        return k + m1, (0.0 if v < 0.0 else v)
    return 0.0, s2 / m


@inline
def _merge(pw, pb, dw, db):
    """dw and db: the blocks' (nblk, G, M) partials added up in block order."""
    for g in range(dw.shape[0]):
        for j in range(dw.shape[1]):
            sw = pw[0, g, j]
            sb = pb[0, g, j]
            for b in range(1, pw.shape[0]):
                sw += pw[b, g, j]
                sb += pb[b, g, j]
            dw[g, j] = sw
            db[g, j] = sb


# ---------------------------------------------------------------- helpers (flat rows (N, G, M))


@helper
def _row_grad(dyr, xr, wr, mu, rstd, center, dxr, pw, pb):
    """One row's dx, with its dweight and dbias terms added onto the float64 partials pw, pb in
    the same pass as its sums (float64); then the map (_dx_map)."""
    sg = 0.0
    sgx = 0.0
    for i in range(xr.shape[0]):
        a = np.float64(dyr[i])
        t = np.float64(xr[i]) - mu
        gi = np.float64(wr[i]) * a
        sg += gi
        sgx += gi * t
        pb[i] += a
        pw[i] += a * (t * rstd)
    _dx_map(dyr, xr, wr, mu, rstd, sg, sgx * rstd, center, dxr)


@helper
def _dx_map(dyr, xr, wr, mu, rstd, sg, sgh, center, dxr):
    """dx = rstd * (w * dy - a2 * (x - mu) - a3) from sg = sum(w * dy) and sgh = sum(w * dy *
    xhat): rstd factored out so that terms that cancel (a one-element row) give exactly 0; the
    map in x's dtype about the mean rounded to it, the rounding moved into a3."""
    m_ = xr.shape[0]
    tp = xr.dtype.type
    m = tp(mu)
    a2 = rstd * sgh / m_
    a3 = (sg / m_ if center else 0.0) - a2 * (mu - np.float64(m))
    r, a2, a3 = tp(rstd), tp(a2), tp(a3)
    for i in range(m_):
        dxr[i] = r * ((wr[i] * dyr[i] - a2 * (xr[i] - m)) - a3)


@inline
def _rstd(v, eps):
    return 1.0 / math.sqrt(v + eps)


@helper
def _tile4(dy, x, n, g, mean, var, eps, w, center, dx, pw, pb):
    """Rows n..n+3 of group g in two passes: one for the four rows' sums and their terms of
    dweight (dy * xhat) and dbias (dy), added together before each read-modify-write of the
    float64 partials pw, pb; then the four dx maps. xhat in x's dtype about the mean rounded to
    it (_about); the sums in float64. Measured (2048, 1024) float32 on one thread: 1160 us as a
    sums pass and a map per row plus a column pass per four rows."""
    d0, d1, d2, d3 = dy[n, g], dy[n + 1, g], dy[n + 2, g], dy[n + 3, g]
    x0, x1, x2, x3 = x[n, g], x[n + 1, g], x[n + 2, g], x[n + 3, g]
    wr = w[g]
    mu0, mu1, mu2, mu3 = mean[n, g], mean[n + 1, g], mean[n + 2, g], mean[n + 3, g]
    rs0, rs1 = _rstd(var[n, g], eps), _rstd(var[n + 1, g], eps)
    rs2, rs3 = _rstd(var[n + 2, g], eps), _rstd(var[n + 3, g], eps)
    m0, r0, e0 = _about(x, mu0, rs0)
    m1, r1, e1 = _about(x, mu1, rs1)
    m2, r2, e2 = _about(x, mu2, rs2)
    m3, r3, e3 = _about(x, mu3, rs3)
    s0 = s1 = s2 = s3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    for i in range(pw.shape[0]):
        a0 = d0[i]
        a1 = d1[i]
        a2 = d2[i]
        a3 = d3[i]
        h0 = (x0[i] - m0) * r0 - e0
        h1 = (x1[i] - m1) * r1 - e1
        h2 = (x2[i] - m2) * r2 - e2
        h3 = (x3[i] - m3) * r3 - e3
        pb[i] += np.float64((a0 + a1) + (a2 + a3))
        pw[i] += np.float64((a0 * h0 + a1 * h1) + (a2 * h2 + a3 * h3))
        wi = np.float64(wr[i])
        g0 = wi * np.float64(a0)
        g1 = wi * np.float64(a1)
        g2 = wi * np.float64(a2)
        g3 = wi * np.float64(a3)
        s0 += g0
        s1 += g1
        s2 += g2
        s3 += g3
        q0 += g0 * np.float64(h0)
        q1 += g1 * np.float64(h1)
        q2 += g2 * np.float64(h2)
        q3 += g3 * np.float64(h3)
    _dx_map(d0, x0, wr, mu0, rs0, s0, q0, center, dx[n, g])
    _dx_map(d1, x1, wr, mu1, rs1, s1, q1, center, dx[n + 1, g])
    _dx_map(d2, x2, wr, mu2, rs2, s2, q2, center, dx[n + 2, g])
    _dx_map(d3, x3, wr, mu3, rs3, s3, q3, center, dx[n + 3, g])


@inline
def _about(x, mu, rstd):
    """(m, r, e) in x's dtype: xhat = (x - mu) * rstd = (x - m) * r - e, with m the mean rounded
    to x's dtype (x - m is exact near the mean) and e its rounding's share, so that xhat keeps
    float64 accuracy about a mean that x's dtype cannot hold (float32 data at mean 1e4)."""
    tp = x.dtype.type
    m = tp(mu)
    return m, tp(rstd), tp((mu - np.float64(m)) * rstd)


# ---------------------------------------------------------------- kernels


# Outputs and partials are allocated by the caller: an np.empty or np.zeros in a kernel compiles
# an overload of its own in every process that compiles (part of a cold first call). The maps
# run in x's dtype (float32 lanes for float32 input: twice as many as float64 ones; measured
# LayerNorm (256, 256) forward 41 -> 14 us), with their per-row scalars rounded once into x's
# dtype (``x.dtype.type``); the sums stay float64. A kernel's block loop is written in the kernel,
# not in a helper it calls: numba optimizes a helper in its own module and again in every
# function that inlines it, so the cold compile of the parallel backward_flat took 3.5-3.7 s with
# the loop in a helper and 2.9 s without, forward_flat 1.9-2.1 s and 1.6 s (the same machine
# code: equal results, equal times).


@kernel
def forward_flat(nblk, x, w, b, eps, center, y, mean, var):
    """y = normalized rows of (N, G, M) x; mean and var (N, G), in their arrays' dtype, into mean,
    var. A block's rows in order, each row's map fused with the next row's sums: one loop reads
    row r + 1 from memory while it writes row r, so the read and write streams overlap (two
    loops per row, sums then map, measured LayerNorm (8192, 1024) 1.73 -> 1.49 ms, (4096, 4096)
    7.1 -> 5.7 ms, 2 threads)."""
    n_, g_, m_ = x.shape
    for blk in prange(nblk):
        r = blk * (n_ * g_) // nblk
        r1 = (blk + 1) * (n_ * g_) // nblk
        if r == r1:
            continue
        n = r // g_  # then counted on: a division per short row costs as much as a sum
        g = r - n * g_
        k = shift(x[n, g, 0]) if center else 0.0
        s1, s2 = sums(x[n, g], k)
        while r < r1:
            mu, v = _moments(s1, s2, k, m_, center)
            mean[n, g] = mu
            var[n, g] = v
            m, rs, d = _about(x, mu, _rstd(v, eps))  # the map in x's dtype (see _about)
            xr = x[n, g]
            yr = y[n, g]
            wr = w[g]
            br = b[g]
            r += 1
            # the next row; the block's last row sums itself again, unused: one loop
            nn, gn = (n, g) if r == r1 else (n, g + 1) if g + 1 < g_ else (n + 1, 0)
            xn = x[nn, gn]
            k = shift(xn[0]) if center else 0.0
            s1 = 0.0
            s2 = 0.0
            for i in range(m_):
                yr[i] = ((xr[i] - m) * rs - d) * wr[i] + br[i]
                t = np.float64(xn[i]) - k
                s1 += t
                s2 += t * t
            n, g = nn, gn


@kernel
def forward_lines(nblk, x, w, b, eps, center, y, mean, var):
    """forward_flat for (N, G, D, L) x with w and b of shape (G, D), line by line (the fused map
    and sums: GroupNorm (64, 256, 32, 32) 6.2 -> 5.1 ms, 2 threads). Every row's sums add up its
    lines' sums in line order, whichever loop makes them: the results do not depend on the
    blocks."""
    n_, g_, d_, l_ = x.shape
    for blk in prange(nblk):
        r = blk * (n_ * g_) // nblk
        r1 = (blk + 1) * (n_ * g_) // nblk
        if r == r1:
            continue
        n = r // g_
        g = r - n * g_
        k = shift(x[n, g, 0, 0]) if center else 0.0
        s1 = 0.0
        s2 = 0.0
        for d in range(d_):
            a1, a2 = sums(x[n, g, d], k)
            s1 += a1
            s2 += a2
        tp = x.dtype.type
        while r < r1:
            mu, v = _moments(s1, s2, k, d_ * l_, center)
            mean[n, g] = mu
            var[n, g] = v
            rstd = _rstd(v, eps)
            m = tp(mu)  # x - mu = (x - m) - (mu - m): the mean's rounding moved into sh
            r += 1
            # the next row, counted on (see forward_flat); the block's last row sums itself again
            nn, gn = (n, g) if r == r1 else (n, g + 1) if g + 1 < g_ else (n + 1, 0)
            k = shift(x[nn, gn, 0, 0]) if center else 0.0
            s1 = 0.0
            s2 = 0.0
            for d in range(d_):
                xr = x[n, g, d]
                yr = y[n, g, d]
                xn = x[nn, gn, d]
                f = rstd * w[g, d]
                sh = tp(b[g, d] - (mu - np.float64(m)) * f)
                f = tp(f)
                a1 = 0.0
                a2 = 0.0
                for i in range(l_):
                    yr[i] = (xr[i] - m) * f + sh
                    t = np.float64(xn[i]) - k
                    a1 += t
                    a2 += t * t
                s1 += a1
                s2 += a2
            n, g = nn, gn


@kernel
def backward_flat(nblk, dy, x, mean, var, eps, w, center, dx, pw, pb, dw, db):
    """dx into dx; each block's dweight and dbias terms into pw[blk], pb[blk] (zeroed (nblk, G,
    M) float64), then their totals over the blocks, in block order, into dw, db ((G, M), stored
    in their dtype). mean and var in either float dtype (read as float64)."""
    n_, g_, _ = x.shape
    for blk in prange(nblk):
        r = blk * (n_ * g_) // nblk
        r1 = (blk + 1) * (n_ * g_) // nblk
        while r < r1:  # rows group-major: r = g * N + n
            g = r // n_
            n0 = r - g * n_
            n1 = min(n0 + 4, n_, n0 + r1 - r)
            if n1 - n0 == 4:
                _tile4(dy, x, n0, g, mean, var, eps, w, center, dx, pw[blk, g], pb[blk, g])
            else:
                for n in range(n0, n1):
                    rstd = _rstd(var[n, g], eps)
                    _row_grad(dy[n, g], x[n, g], w[g], mean[n, g], rstd, center, dx[n, g],
                              pw[blk, g], pb[blk, g])
            r += n1 - n0
    _merge(pw, pb, dw, db)


@kernel
def backward_lines(nblk, dy, x, mean, var, eps, w, center, dx, pw, pb, dw, db):
    """backward_flat for (N, G, D, L); partials of shape (nblk, G, D)."""
    n_, g_, d_, l_ = x.shape
    rows = n_ * g_
    m_ = d_ * l_
    for blk in prange(nblk):
        for r in range(blk * rows // nblk, (blk + 1) * rows // nblk):
            n = r // g_
            g = r - n * g_
            mu = mean[n, g]
            rstd = _rstd(var[n, g], eps)
            sg = 0.0
            sgx = 0.0
            for d in range(d_):
                a1, a2 = dot(dy[n, g, d], x[n, g, d], mu)
                pb[blk, g, d] += a1
                pw[blk, g, d] += a2 * rstd
                sg += w[g, d] * a1
                sgx += w[g, d] * a2
            tp = x.dtype.type
            m = tp(mu)  # the mean's rounding moved into k3 (see forward_lines)
            k2 = rstd * rstd * rstd * sgx / m_
            k3 = (rstd * sg / m_ if center else 0.0) - k2 * (mu - np.float64(m))
            k2, k3 = tp(k2), tp(k3)
            for d in range(d_):
                dyr = dy[n, g, d]
                xr = x[n, g, d]
                dxr = dx[n, g, d]
                f = tp(rstd * w[g, d])
                for i in range(l_):
                    dxr[i] = f * dyr[i] - k2 * (xr[i] - m) - k3
    _merge(pw, pb, dw, db)


@kernel
def backward_rows(nblk, dy, x, mean, var, eps, w, center, dx, pw, pb, dw, db):
    """backward_flat one row at a time, n-major, without the four-row tiles: for inputs that run
    on the calling thread, where its cold compile (a third of backward_flat's) is most of a
    first call."""
    n_, g_, _ = x.shape
    for blk in prange(nblk):
        for r in range(blk * (n_ * g_) // nblk, (blk + 1) * (n_ * g_) // nblk):
            n = r // g_
            g = r - n * g_
            rstd = _rstd(var[n, g], eps)
            _row_grad(dy[n, g], x[n, g], w[g], mean[n, g], rstd, center, dx[n, g], pw[blk, g],
                      pb[blk, g])
    _merge(pw, pb, dw, db)
