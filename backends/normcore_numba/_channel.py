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
* ``cols`` (``_cols``): channels-last input and short contiguous rows.

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

Every ``@njit`` function these kernels compile lives in this file or in ``_shared`` (see
``_jit`` on the cache).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import helper, inline, kernel
from ._shared import (
    affine,
    dot,
    grad_coefficients,
    moments,
    narrowed,
    rounded,
    rounded_grad,
    shift,
    sums,
    totals,
    update,
)

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
        s1, s2 = sums(x[n, c, lo:hi], k[c])
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
        s1, s2 = dot(dy[n, c, lo:hi], x[n, c, lo:hi], mu[c])
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


# ---------------------------------------------------------------- channel-major, layout chan


@helper
def _fwd_chan(c, x, eps, w, b, y, narrow, mean, var):
    """Channel c's sums over its N rows, its statistics, then its map while the channel is
    still in the L2 cache (see forward_chan)."""
    n_, _, l_ = x.shape
    m = n_ * l_
    k = shift(x[0, c, 0])
    s1 = 0.0
    s2 = 0.0
    for n in range(n_):
        a1, a2 = sums(x[n, c], k)
        s1 += a1
        s2 += a2
    m1 = s1 / m
    v = s2 / m - m1 * m1
    v = 0.0 if v < 0.0 else v  # NaN stays NaN
    mean[c] = k + m1
    var[c] = v
    if y.size:
        mu = narrowed(k + m1, narrow)
        a = 1.0 / math.sqrt(narrowed(v, narrow) + eps)
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
        a1, a2 = dot(dy[n, c], x[n, c], mu)
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
        k[c] = shift(x[0, c, 0])
    for blk in prange(nblk):
        _sums_ncl(blk, nblk, x, pieces, k, p1, p2)
    mean, var = moments(p1, p2, k, 1, n_ * l_)
    if y.size:
        mu, a, s = affine(mean, var, eps, w, b, narrow)
        rounded(mu, a, s, cx)
        for blk in prange(nblk):
            _map_ncl(blk, nblk, x, pieces, cx, y)
    update(mean, var, narrow, rm, rv, momentum, corr, out_m, out_v)
    return mean, var


@kernel
def normalize_ncl(nblk, x, pieces, mean, var, eps, w, b, y, cx):
    """y = (x - mean[c]) / sqrt(var[c] + eps) * w[c] + b[c] over (N, C, L)."""
    mu, a, s = affine(mean, var, eps, w, b, False)
    rounded(mu, a, s, cx)
    for blk in prange(nblk):
        _map_ncl(blk, nblk, x, pieces, cx, y)


@kernel
def backward_ncl(nblk, dy, x, pieces, mean, var, eps, w, batch_stats, dx, p1, p2, cx):
    """dx into dx (when not empty); returns float64 (dweight, sum(dy), sum(dy * (x - mu))),
    sum(dy) being dbias."""
    n_, c_, l_ = x.shape
    for blk in prange(nblk):
        _dot_ncl(blk, nblk, dy, x, pieces, mean, p1, p2)
    s_dy = totals(p1, 1, c_)
    s_dyx = totals(p2, 1, c_)
    dweight, a, k2, k3 = grad_coefficients(s_dy, s_dyx, var, eps, w, n_ * l_, batch_stats)
    if dx.size:
        rounded_grad(mean, a, k2, k3, cx)
        for blk in prange(nblk):
            _grad_ncl(blk, nblk, dy, x, pieces, cx, dx)
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
    update(mean, var, narrow, rm, rv, momentum, corr, out_m, out_v)


@kernel
def backward_chan(nblk, dy, x, mean, var, eps, w, batch_stats, dx, dweight, s_dy, s_dyx):
    """backward_ncl channel by channel (see forward_chan); dweight, sum(dy) and
    sum(dy * (x - mu)) into the last three (float64 (C,))."""
    c_ = x.shape[1]
    for blk in prange(nblk):
        for c in range(blk * c_ // nblk, (blk + 1) * c_ // nblk):
            _bwd_chan(c, dy, x, mean, var, eps, w, batch_stats, dx, dweight, s_dy, s_dyx)
