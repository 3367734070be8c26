"""Channel-view kernels (BatchNorm) for the column layout, ``cols``: a 2-D (R, Q) view of x3
(N, C, L) whose column j belongs to channel (j // inner) % C, walked row by row with one float64
partial per column and block: rows of C channels (channels-last input as (N * L, C),
BatchNorm1d's (N, C); inner = 1), or short contiguous (C, L) slabs as (N, C * L) (inner = L), a
few adjacent rows taken as one where they are contiguous (a loop over 16 channels costs its setup
per row). Every row adds element-wise onto the partial row, so short rows cost no reduction of
their own; the partials are folded per channel once, at the end (``_shared.totals``).

Three kernels, as in ``_channel``: forward (statistics, optionally the map and the running
update), normalize with given statistics, backward (sums and dx). Sums, shifts and the maps'
rounding are ``_channel``'s (``_shared``). Per element (s = itemsize): statistics s, training
forward 3s, normalize 2s, backward 5s (the second reads from cache where it fits).

Every ``@njit`` function these kernels compile lives in this file or in ``_shared`` (see
``_jit`` on the cache).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, inline, kernel
from ._shared import affine, grad_coefficients, moments, rounded, rounded_grad, shift, totals, update

# ---------------------------------------------------------------- helpers


@inline
def _columns(cc, inner, cx):
    """The per-channel coefficient rows cc (rows, C) repeated per column into cx (rows, Q):
    column j in channel (j // inner) % C."""
    for r in range(cc.shape[0]):
        _per_column(cc[r], inner, cx[r])


@inline
def _per_column(v, inner, out):
    """out[j] = v[(j // inner) % C]: a per-channel vector per column, in out's dtype (x's: the
    maps then run in x's precision, float32 lanes for float32 input)."""
    period = v.shape[0] * inner
    for base in range(0, out.shape[0], period):
        for c in range(v.shape[0]):
            t = v[c]
            for i in range(inner):
                out[base + c * inner + i] = t


# ---------------------------------------------------------------- block bodies, layout cols


@helper
def _sums_cols(blk, nblk, x, kc, p1, p2, tile):
    """Each column's sums of this block's rows onto p1[blk], p2[blk], ``tile`` columns at a time
    (their partials stay in the L1 cache), four rows' terms added together (float64) before each
    read-modify-write of the partials (row by row, those were most of the pass)."""
    r_, q_ = x.shape
    r0 = blk * r_ // nblk
    r1 = (blk + 1) * r_ // nblk
    for j0 in range(0, q_, tile):
        j1 = min(j0 + tile, q_)
        q1 = p1[blk, j0:j1]
        q2 = p2[blk, j0:j1]
        k = kc[j0:j1]
        r = r0
        while r + 4 <= r1:
            x0, x1, x2, x3 = x[r, j0:j1], x[r + 1, j0:j1], x[r + 2, j0:j1], x[r + 3, j0:j1]
            for j in range(q1.shape[0]):
                t0 = np.float64(x0[j]) - k[j]
                t1 = np.float64(x1[j]) - k[j]
                t2 = np.float64(x2[j]) - k[j]
                t3 = np.float64(x3[j]) - k[j]
                q1[j] += (t0 + t1) + (t2 + t3)
                q2[j] += (t0 * t0 + t1 * t1) + (t2 * t2 + t3 * t3)
            r += 4
        for rr in range(r, r1):
            xr = x[rr, j0:j1]
            for j in range(q1.shape[0]):
                t = np.float64(xr[j]) - k[j]
                q1[j] += t
                q2[j] += t * t


@helper
def _map_cols(blk, nblk, x, cx, cc, inner, y):
    """y = (x - m) * a + s with per-column coefficient rows cx; for slabs (inner > 1), runs of
    ``inner`` columns with one channel's scalars cc[:, c] (a third of the loads: BatchNorm2d
    (256, 64, 8, 8) forward 1.31x -> 1.05x the earlier backend's time, 2 threads)."""
    r_, q_ = x.shape
    c_ = cc.shape[1]
    mc, ac, sc = cx[0], cx[1], cx[2]
    for r in range(blk * r_ // nblk, (blk + 1) * r_ // nblk):
        xr = x[r]
        yr = y[r]
        if inner > 1:
            for base in range(0, q_, c_ * inner):
                for c in range(c_):
                    m, a, s = cc[0, c], cc[1, c], cc[2, c]
                    xs = xr[base + c * inner:base + (c + 1) * inner]
                    ys = yr[base + c * inner:base + (c + 1) * inner]
                    for i in range(inner):
                        ys[i] = (xs[i] - m) * a + s
        else:
            for j in range(q_):
                yr[j] = (xr[j] - mc[j]) * ac[j] + sc[j]


@helper
def _dot_cols(blk, nblk, dy, x, mc, p1, p2, tile):
    """The backward's column sums, by tiles of columns and four rows at a time (_sums_cols)."""
    r_, q_ = x.shape
    r0 = blk * r_ // nblk
    r1 = (blk + 1) * r_ // nblk
    for j0 in range(0, q_, tile):
        j1 = min(j0 + tile, q_)
        q1 = p1[blk, j0:j1]
        q2 = p2[blk, j0:j1]
        m = mc[j0:j1]
        r = r0
        while r + 4 <= r1:
            d0, d1, d2, d3 = dy[r, j0:j1], dy[r + 1, j0:j1], dy[r + 2, j0:j1], dy[r + 3, j0:j1]
            x0, x1, x2, x3 = x[r, j0:j1], x[r + 1, j0:j1], x[r + 2, j0:j1], x[r + 3, j0:j1]
            for j in range(q1.shape[0]):
                a0 = np.float64(d0[j])
                a1 = np.float64(d1[j])
                a2 = np.float64(d2[j])
                a3 = np.float64(d3[j])
                q1[j] += (a0 + a1) + (a2 + a3)
                q2[j] += ((a0 * (np.float64(x0[j]) - m[j]) + a1 * (np.float64(x1[j]) - m[j]))
                          + (a2 * (np.float64(x2[j]) - m[j]) + a3 * (np.float64(x3[j]) - m[j])))
            r += 4
        for rr in range(r, r1):
            dyr = dy[rr, j0:j1]
            xr = x[rr, j0:j1]
            for j in range(q1.shape[0]):
                d = np.float64(dyr[j])
                q1[j] += d
                q2[j] += d * (np.float64(xr[j]) - m[j])


@helper
def _grad_cols(blk, nblk, dy, x, cx, cc, inner, dx):
    """dx = a * dy - k2 * (x - m) - k3, per column or, for slabs, per run (see _map_cols)."""
    r_, q_ = x.shape
    c_ = cc.shape[1]
    mc, ac, k2c, k3c = cx[0], cx[1], cx[2], cx[3]
    for r in range(blk * r_ // nblk, (blk + 1) * r_ // nblk):
        dyr = dy[r]
        xr = x[r]
        dxr = dx[r]
        if inner > 1:
            for base in range(0, q_, c_ * inner):
                for c in range(c_):
                    m, a, g, h = cc[0, c], cc[1, c], cc[2, c], cc[3, c]
                    lo = base + c * inner
                    dys = dyr[lo:lo + inner]
                    xs = xr[lo:lo + inner]
                    dxs = dxr[lo:lo + inner]
                    for i in range(inner):
                        dxs[i] = a * dys[i] - g * (xs[i] - m) - h
        else:
            for j in range(q_):
                dxr[j] = ac[j] * dyr[j] - k2c[j] * (xr[j] - mc[j]) - k3c[j]


# ---------------------------------------------------------------- kernels


# Partials (zeroed, (nblk, C) or (nblk, Q) float64) and the maps' coefficient rows ``cx``
# ((3 or 4, C) or (3 or 4, Q) in x's dtype) are allocated by the caller: an np.zeros in a kernel
# compiles an overload of its own in every process that compiles. The maps run in x's dtype
# (float32 lanes for float32 input: twice the float64 ones), their coefficients rounded once.

@kernel
def forward_cols(nblk, x, inner, c_, eps, w, b, y, narrow, rm, rv, momentum, corr, out_m, out_v,
                 p1, p2, cx, tile):
    """forward_ncl for the (R, Q) column view (column j in channel (j // inner) % c_)."""
    r_, q_ = x.shape
    k = np.empty(c_)
    for c in range(c_):
        k[c] = shift(x[0, c * inner])
    kc = np.empty(q_)
    _per_column(k, inner, kc)
    for blk in prange(nblk):
        _sums_cols(blk, nblk, x, kc, p1, p2, tile)
    mean, var = moments(p1, p2, k, inner, r_ * (q_ // c_))
    if y.size:
        mu, a, s = affine(mean, var, eps, w, b, narrow)
        cc = np.empty((3, c_), cx.dtype)
        rounded(mu, a, s, cc)
        if inner == 1:
            _columns(cc, inner, cx)
        for blk in prange(nblk):
            _map_cols(blk, nblk, x, cx, cc, inner, y)
    update(mean, var, narrow, rm, rv, momentum, corr, out_m, out_v)
    return mean, var


@kernel
def normalize_cols(nblk, x, inner, mean, var, eps, w, b, y, cx):
    """normalize_ncl for the (R, Q) column view."""
    mu, a, s = affine(mean, var, eps, w, b, False)
    cc = np.empty((3, mean.shape[0]), cx.dtype)
    rounded(mu, a, s, cc)
    if inner == 1:
        _columns(cc, inner, cx)
    for blk in prange(nblk):
        _map_cols(blk, nblk, x, cx, cc, inner, y)


@kernel
def backward_cols(nblk, dy, x, inner, mean, var, eps, w, batch_stats, dx, p1, p2, cx, tile):
    """backward_ncl for the (R, Q) column view."""
    r_, q_ = x.shape
    c_ = mean.shape[0]
    mc = np.empty(q_)
    _per_column(mean, inner, mc)
    for blk in prange(nblk):
        _dot_cols(blk, nblk, dy, x, mc, p1, p2, tile)
    s_dy = totals(p1, inner, c_)
    s_dyx = totals(p2, inner, c_)
    dweight, a, k2, k3 = grad_coefficients(s_dy, s_dyx, var, eps, w, r_ * (q_ // c_),
                                            batch_stats)
    if dx.size:
        cc = np.empty((4, c_), cx.dtype)
        rounded_grad(mean, a, k2, k3, cc)
        if inner == 1:
            _columns(cc, inner, cx)
        for blk in prange(nblk):
            _grad_cols(blk, nblk, dy, x, cx, cc, inner, dx)
    return dweight, s_dy, s_dyx
