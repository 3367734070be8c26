"""Channel-view kernels (BatchNorm): statistics per channel over axes (0, 2) of x3 (N, C, L).

Three layouts; ``ncl`` and ``cols`` have three kernels each (forward: statistics and optionally
normalize and the running update in one call; normalize with given statistics; backward: sums
and dx in one call), ``chan`` a forward and a backward (its evaluation map is ``ncl``'s):

* ``chan``: NCHW input whose channels are small (N * L elements within ``_plan.CHAN_BYTES``),
  channel by channel: a block takes a range of channels, and each channel's second pass (the
  map, or dx) runs right after its sums, while the channel is in the L2 cache. Per element from
  memory: forward 2s (read x, write y), backward 3s (read dy and x, write dx).

* ``ncl``: (n, c) rows of L (NCHW input). Units of work are the rows, cut into ``pieces``
  along L when there are few long rows; each row is reduced to two float64 sums added onto its
  block's partial of channel c.
* ``cols``: a 2-D (R, Q) view whose column j belongs to channel (j // inner) % C, walked row by
  row with one float64 partial per column and block: rows of C channels (channels-last input as
  (N * L, C), BatchNorm1d's (N, C); inner = 1), or short contiguous (C, L) slabs as (N, C * L)
  (inner = L), a few adjacent rows taken as one where they are contiguous (a loop over 16
  channels costs its setup per row). Every row adds element-wise onto the partial row, so short
  rows cost no reduction of their own; the partials are folded per channel once, at the end.

Bandwidth accounting per element (s = itemsize), the floor being a copy (2s):

* statistics:        read x                 -> s
* training forward:  statistics + normalize -> 3s (x read twice; from cache when it fits)
* normalize:         read x, write y        -> 2s
* backward:          read dy, x (sums), read them again, write dx -> 5s

Sums: float64 accumulators for every input dtype (float32 input cannot overflow them), about a
shift per channel that is a sample of the data (its first element, 0 where that is not finite),
so the one-pass variance ``S2/M - (S1/M)**2`` has no cancellation when |mean| >> std and a
constant channel gets exactly its value as mean and 0 as variance. The loops are reassociated
(``_jit.FLAGS``) so LLVM sums in vector lanes; blocks add into partials of their own
((nblk, C) or (nblk, Q) float64), merged in block order by the serial code after the ``prange``
loop: deterministic for a fixed thread count.

Every ``@njit`` function these kernels compile lives in this file (see ``_jit`` on the cache).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import helper, inline, kernel

# ---------------------------------------------------------------- helpers (inlined by LLVM)


@inline
def _shift(v):
    """A sample of the data as the shift of its sums: v itself, or 0 where v is not finite."""
    v = np.float64(v)
    return v if math.isfinite(v) else 0.0


@helper
def _sums(v, k):
    """(sum(v - k), sum((v - k)**2)) in float64."""
    s1 = 0.0
    s2 = 0.0
    for i in range(v.shape[0]):
        t = np.float64(v[i]) - k
        s1 += t
        s2 += t * t
    return s1, s2


@helper
def _dot(dy, x, mu):
    """(sum(dy), sum(dy * (x - mu))) in float64."""
    s1 = 0.0
    s2 = 0.0
    for i in range(dy.shape[0]):
        d = np.float64(dy[i])
        s1 += d
        s2 += d * (np.float64(x[i]) - mu)
    return s1, s2


@inline
def _totals(p, inner, c_):
    """Per-channel totals of (nblk, Q) partials, column j in channel (j // inner) % C: block
    order, then column order."""
    out = np.empty(c_)
    period = c_ * inner
    for c in range(c_):
        t = 0.0
        for b in range(p.shape[0]):
            s = 0.0
            for base in range(0, p.shape[1], period):
                for i in range(inner):
                    s += p[b, base + c * inner + i]
            t += s
        out[c] = t
    return out


@inline
def _moments(p1, p2, k, inner, m):
    """(mean, biased var) per channel, float64, from partials of sums shifted by k."""
    c_ = k.shape[0]
    s1 = _totals(p1, inner, c_)
    s2 = _totals(p2, inner, c_)
    mean = np.empty(c_)
    var = np.empty(c_)
    for c in range(c_):
        m1 = s1[c] / m
        mean[c] = k[c] + m1
        v = s2[c] / m - m1 * m1
        var[c] = 0.0 if v < 0.0 else v  # NaN stays NaN
    return mean, var


@inline
def _narrow(v, narrow):
    """v rounded to float32 where the statistics of this input are float32 (the layers then
    normalize with the statistics they return, as the reference does)."""
    return np.float64(np.float32(v)) if narrow else v


@inline
def _affine(mean, var, eps, w, b, narrow):
    """(mu, a, s): y = (x - mu) * a + s per channel; w/b of size 0 mean 1 and 0."""
    c_ = mean.shape[0]
    mu = np.empty(c_)
    a = np.empty(c_)
    s = np.empty(c_)
    for c in range(c_):
        mu[c] = _narrow(mean[c], narrow)
        a[c] = 1.0 / math.sqrt(_narrow(var[c], narrow) + eps)
        if w.shape[0]:
            a[c] *= w[c]
        s[c] = b[c] if b.shape[0] else 0.0
    return mu, a, s


@inline
def _update(mean, var, narrow, rm, rv, momentum, corr, out_m, out_v):
    """The running update into out_m/out_v (float64); nothing when rm is empty."""
    for c in range(rm.shape[0]):
        out_m[c] = (1.0 - momentum) * rm[c] + momentum * _narrow(mean[c], narrow)
        out_v[c] = (1.0 - momentum) * rv[c] + momentum * corr * _narrow(var[c], narrow)


@inline
def _rounded(mu, a, k, cx):
    """cx[0] = mu rounded to x's dtype (cx's), m; cx[1] = a; cx[2] = k - a * (mu - m) for maps
    ``(x - mu) * a + k``, computed as ``(x - m) * a + (k - a * (mu - m))``: x - m is exact near
    the mean, so a mean that x's dtype cannot hold (float32 data at mean 1e4) keeps its float64
    accuracy. A constant channel (mu exactly its value) still maps to exactly k."""
    tp = cx.dtype.type
    for c in range(mu.shape[0]):
        m = tp(mu[c])
        cx[0, c] = m
        cx[1, c] = a[c]
        cx[2, c] = k[c] - a[c] * (mu[c] - np.float64(m))


@inline
def _rounded_grad(mu, a, k2, k3, cx):
    """_rounded for dx = a * dy - k2 * (x - mu) - k3: cx = (m, a, k2, k3 - k2 * (mu - m))."""
    tp = cx.dtype.type
    for c in range(mu.shape[0]):
        m = tp(mu[c])
        cx[0, c] = m
        cx[1, c] = a[c]
        cx[2, c] = k2[c]
        cx[3, c] = k3[c] - k2[c] * (mu[c] - np.float64(m))


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


@inline
def _grad_coefficients(s_dy, s_dyx, var, eps, w, m, batch_stats):
    """(dweight, a, k2, k3): dx = a * dy - k2 * (x - mu) - k3, from the per-channel sums of dy
    and dy * (x - mu); k2 = k3 = 0 for fixed statistics (evaluation)."""
    c_ = var.shape[0]
    dweight = np.empty(c_)
    a = np.empty(c_)
    k2 = np.empty(c_)
    k3 = np.empty(c_)
    for c in range(c_):
        k2[c] = 0.0
        k3[c] = 0.0
        rstd = 1.0 / math.sqrt(np.float64(var[c]) + eps)
        dweight[c] = s_dyx[c] * rstd
        a[c] = rstd * (w[c] if w.shape[0] else 1.0)
        if batch_stats:
            k2[c] = a[c] * rstd * rstd * s_dyx[c] / m
            k3[c] = a[c] * s_dy[c] / m
    return dweight, a, k2, k3


# ---------------------------------------------------------------- block bodies, layout ncl


@inline
def _first(blk, nblk, units, pieces, c_):
    """Block blk's first unit and end, and the first unit's (n, c, piece): units are (n, c)
    rows cut into ``pieces``, in (n, c, piece) order. A block decodes its first unit once and
    then counts like an odometer (``_next``): a division per short row cost as much as the row."""
    u0 = blk * units // nblk
    row = u0 // pieces
    return u0, (blk + 1) * units // nblk, row // c_, row % c_, u0 - row * pieces


@inline
def _next(n, c, j, pieces, c_):
    j += 1
    if j == pieces:
        j = 0
        c += 1
        if c == c_:
            c = 0
            n += 1
    return n, c, j


@inline
def _span(j, pieces, l_):
    """Piece j's [lo, hi) of a row of l_."""
    if pieces == 1:
        return 0, l_
    return j * l_ // pieces, (j + 1) * l_ // pieces


@helper
def _sums_ncl(blk, nblk, x, pieces, k, p1, p2):
    n_, c_, l_ = x.shape
    u0, u1, n, c, j = _first(blk, nblk, n_ * c_ * pieces, pieces, c_)
    for _ in range(u0, u1):
        lo, hi = _span(j, pieces, l_)
        s1, s2 = _sums(x[n, c, lo:hi], k[c])
        p1[blk, c] += s1
        p2[blk, c] += s2
        n, c, j = _next(n, c, j, pieces, c_)


@helper
def _map_ncl(blk, nblk, x, pieces, cx, y):
    n_, c_, l_ = x.shape
    u0, u1, n, c, j = _first(blk, nblk, n_ * c_ * pieces, pieces, c_)
    for _ in range(u0, u1):
        lo, hi = _span(j, pieces, l_)
        xr = x[n, c, lo:hi]  # indices from 0: numba then knows them non-negative (vectorizes)
        yr = y[n, c, lo:hi]
        m, f, t = cx[0, c], cx[1, c], cx[2, c]
        for i in range(xr.shape[0]):
            yr[i] = (xr[i] - m) * f + t
        n, c, j = _next(n, c, j, pieces, c_)


@helper
def _dot_ncl(blk, nblk, dy, x, pieces, mu, p1, p2):
    n_, c_, l_ = x.shape
    u0, u1, n, c, j = _first(blk, nblk, n_ * c_ * pieces, pieces, c_)
    for _ in range(u0, u1):
        lo, hi = _span(j, pieces, l_)
        s1, s2 = _dot(dy[n, c, lo:hi], x[n, c, lo:hi], mu[c])
        p1[blk, c] += s1
        p2[blk, c] += s2
        n, c, j = _next(n, c, j, pieces, c_)


@helper
def _grad_ncl(blk, nblk, dy, x, pieces, cx, dx):
    n_, c_, l_ = x.shape
    u0, u1, n, c, j = _first(blk, nblk, n_ * c_ * pieces, pieces, c_)
    for _ in range(u0, u1):
        lo, hi = _span(j, pieces, l_)
        dyr = dy[n, c, lo:hi]
        xr = x[n, c, lo:hi]
        dxr = dx[n, c, lo:hi]
        m, f, g, h = cx[0, c], cx[1, c], cx[2, c], cx[3, c]
        for i in range(xr.shape[0]):
            dxr[i] = f * dyr[i] - g * (xr[i] - m) - h
        n, c, j = _next(n, c, j, pieces, c_)


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
def _map_cols(blk, nblk, x, cx, y):
    r_, q_ = x.shape
    mc, ac, sc = cx[0], cx[1], cx[2]
    for r in range(blk * r_ // nblk, (blk + 1) * r_ // nblk):
        xr = x[r]
        yr = y[r]
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
def _grad_cols(blk, nblk, dy, x, cx, dx):
    r_, q_ = x.shape
    mc, ac, k2c, k3c = cx[0], cx[1], cx[2], cx[3]
    for r in range(blk * r_ // nblk, (blk + 1) * r_ // nblk):
        dyr = dy[r]
        xr = x[r]
        dxr = dx[r]
        for j in range(q_):
            dxr[j] = ac[j] * dyr[j] - k2c[j] * (xr[j] - mc[j]) - k3c[j]


# ---------------------------------------------------------------- channel-major, layout chan


@helper
def _fwd_chan(c, x, eps, w, b, y, narrow, mean, var):
    """Channel c's sums over its N rows, its statistics, then its map while the channel is
    still in the L2 cache (see forward_chan)."""
    n_, _, l_ = x.shape
    m = n_ * l_
    k = _shift(x[0, c, 0])
    s1 = 0.0
    s2 = 0.0
    for n in range(n_):
        a1, a2 = _sums(x[n, c], k)
        s1 += a1
        s2 += a2
    m1 = s1 / m
    v = s2 / m - m1 * m1
    v = 0.0 if v < 0.0 else v  # NaN stays NaN
    mean[c] = k + m1
    var[c] = v
    if y.size:
        mu = _narrow(k + m1, narrow)
        a = 1.0 / math.sqrt(_narrow(v, narrow) + eps)
        if w.shape[0]:
            a *= w[c]
        tp = y.dtype.type
        mm = tp(mu)  # as _rounded: x - mu = (x - mm) - (mu - mm)
        t = tp((b[c] if b.shape[0] else 0.0) - a * (mu - np.float64(mm)))
        f = tp(a)
        for n in range(n_):
            xr = x[n, c]
            yr = y[n, c]
            for i in range(l_):
                yr[i] = (xr[i] - mm) * f + t


@helper
def _bwd_chan(c, dy, x, mean, var, eps, w, batch_stats, dx, dweight, s_dy, s_dyx):
    """Channel c's sums of dy and dy * (x - mu), its coefficients, then its dx while the
    channel is still in the L2 cache (see backward_chan)."""
    n_, _, l_ = x.shape
    mu = mean[c]
    s1 = 0.0
    s2 = 0.0
    for n in range(n_):
        a1, a2 = _dot(dy[n, c], x[n, c], mu)
        s1 += a1
        s2 += a2
    s_dy[c] = s1
    s_dyx[c] = s2
    rstd = 1.0 / math.sqrt(np.float64(var[c]) + eps)
    dweight[c] = s2 * rstd
    a = rstd * (w[c] if w.shape[0] else 1.0)
    k2 = a * rstd * rstd * s2 / (n_ * l_) if batch_stats else 0.0
    k3 = a * s1 / (n_ * l_) if batch_stats else 0.0
    if dx.size:
        tp = dx.dtype.type
        mm = tp(mu)  # as _rounded_grad
        f, g, h = tp(a), tp(k2), tp(k3 - k2 * (mu - np.float64(mm)))
        for n in range(n_):
            dyr = dy[n, c]
            xr = x[n, c]
            dxr = dx[n, c]
            for i in range(l_):
                dxr[i] = f * dyr[i] - g * (xr[i] - mm) - h


# ---------------------------------------------------------------- kernels


# Partials (zeroed, (nblk, C) or (nblk, Q) float64) and the maps' coefficient rows ``cx``
# ((3 or 4, C) or (3 or 4, Q) in x's dtype) are allocated by the caller: an np.zeros in a kernel
# compiles an overload of its own in every process that compiles. The maps run in x's dtype
# (float32 lanes for float32 input: twice the float64 ones), their coefficients rounded once.


@kernel
def forward_ncl(nblk, x, pieces, eps, w, b, y, narrow, rm, rv, momentum, corr, out_m, out_v,
                p1, p2, cx):
    """Statistics of (N, C, L) x, then (when y is not empty) y = normalized x, then (when rm is
    not empty) the running update into out_m/out_v. Returns float64 (mean, var)."""
    n_, c_, l_ = x.shape
    k = np.empty(c_)
    for c in range(c_):
        k[c] = _shift(x[0, c, 0])
    for blk in prange(nblk):
        _sums_ncl(blk, nblk, x, pieces, k, p1, p2)
    mean, var = _moments(p1, p2, k, 1, n_ * l_)
    if y.size:
        mu, a, s = _affine(mean, var, eps, w, b, narrow)
        _rounded(mu, a, s, cx)
        for blk in prange(nblk):
            _map_ncl(blk, nblk, x, pieces, cx, y)
    _update(mean, var, narrow, rm, rv, momentum, corr, out_m, out_v)
    return mean, var


@kernel
def normalize_ncl(nblk, x, pieces, mean, var, eps, w, b, y, cx):
    """y = (x - mean[c]) / sqrt(var[c] + eps) * w[c] + b[c] over (N, C, L)."""
    mu, a, s = _affine(mean, var, eps, w, b, False)
    _rounded(mu, a, s, cx)
    for blk in prange(nblk):
        _map_ncl(blk, nblk, x, pieces, cx, y)


@kernel
def backward_ncl(nblk, dy, x, pieces, mean, var, eps, w, batch_stats, dx, p1, p2, cx):
    """dx into dx (when not empty); returns float64 (dweight, sum(dy), sum(dy * (x - mu))),
    sum(dy) being dbias."""
    n_, c_, l_ = x.shape
    for blk in prange(nblk):
        _dot_ncl(blk, nblk, dy, x, pieces, mean, p1, p2)
    s_dy = _totals(p1, 1, c_)
    s_dyx = _totals(p2, 1, c_)
    dweight, a, k2, k3 = _grad_coefficients(s_dy, s_dyx, var, eps, w, n_ * l_, batch_stats)
    if dx.size:
        _rounded_grad(mean, a, k2, k3, cx)
        for blk in prange(nblk):
            _grad_ncl(blk, nblk, dy, x, pieces, cx, dx)
    return dweight, s_dy, s_dyx


@kernel
def forward_cols(nblk, x, inner, c_, eps, w, b, y, narrow, rm, rv, momentum, corr, out_m, out_v,
                 p1, p2, cx, tile):
    """forward_ncl for the (R, Q) column view (column j in channel (j // inner) % c_)."""
    r_, q_ = x.shape
    k = np.empty(c_)
    for c in range(c_):
        k[c] = _shift(x[0, c * inner])
    kc = np.empty(q_)
    _per_column(k, inner, kc)
    for blk in prange(nblk):
        _sums_cols(blk, nblk, x, kc, p1, p2, tile)
    mean, var = _moments(p1, p2, k, inner, r_ * (q_ // c_))
    if y.size:
        mu, a, s = _affine(mean, var, eps, w, b, narrow)
        cc = np.empty((3, c_), cx.dtype)
        _rounded(mu, a, s, cc)
        _columns(cc, inner, cx)
        for blk in prange(nblk):
            _map_cols(blk, nblk, x, cx, y)
    _update(mean, var, narrow, rm, rv, momentum, corr, out_m, out_v)
    return mean, var


@kernel
def normalize_cols(nblk, x, inner, mean, var, eps, w, b, y, cx):
    """normalize_ncl for the (R, Q) column view."""
    mu, a, s = _affine(mean, var, eps, w, b, False)
    cc = np.empty((3, mean.shape[0]), cx.dtype)
    _rounded(mu, a, s, cc)
    _columns(cc, inner, cx)
    for blk in prange(nblk):
        _map_cols(blk, nblk, x, cx, y)


@kernel
def backward_cols(nblk, dy, x, inner, mean, var, eps, w, batch_stats, dx, p1, p2, cx, tile):
    """backward_ncl for the (R, Q) column view."""
    r_, q_ = x.shape
    c_ = mean.shape[0]
    mc = np.empty(q_)
    _per_column(mean, inner, mc)
    for blk in prange(nblk):
        _dot_cols(blk, nblk, dy, x, mc, p1, p2, tile)
    s_dy = _totals(p1, inner, c_)
    s_dyx = _totals(p2, inner, c_)
    dweight, a, k2, k3 = _grad_coefficients(s_dy, s_dyx, var, eps, w, r_ * (q_ // c_),
                                            batch_stats)
    if dx.size:
        cc = np.empty((4, c_), cx.dtype)
        _rounded_grad(mean, a, k2, k3, cc)
        _columns(cc, inner, cx)
        for blk in prange(nblk):
            _grad_cols(blk, nblk, dy, x, cx, dx)
    return dweight, s_dy, s_dyx


@kernel
def forward_chan(nblk, x, eps, w, b, y, narrow, rm, rv, momentum, corr, out_m, out_v, mean, var):
    """forward_ncl channel by channel: each block takes a contiguous range of channels, and each
    channel's map runs right after its sums, reading the channel again from the L2 cache instead
    of memory (a channel of N * L elements fits it: ``_plan.CHAN_BYTES``). The statistics go
    into mean, var (float64 (C,))."""
    c_ = x.shape[1]
    for blk in prange(nblk):
        for c in range(blk * c_ // nblk, (blk + 1) * c_ // nblk):
            _fwd_chan(c, x, eps, w, b, y, narrow, mean, var)
    _update(mean, var, narrow, rm, rv, momentum, corr, out_m, out_v)


@kernel
def backward_chan(nblk, dy, x, mean, var, eps, w, batch_stats, dx, dweight, s_dy, s_dyx):
    """backward_ncl channel by channel (see forward_chan); dweight, sum(dy) and
    sum(dy * (x - mu)) into the last three (float64 (C,))."""
    c_ = x.shape[1]
    for blk in prange(nblk):
        for c in range(blk * c_ // nblk, (blk + 1) * c_ // nblk):
            _bwd_chan(c, dy, x, mean, var, eps, w, batch_stats, dx, dweight, s_dy, s_dyx)
