"""Channel-view kernels (BatchNorm): x3 of shape (N, C, L), statistics per channel over (N, L).

Bandwidth accounting per element (s = itemsize, 4 for float32), the floor being a copy (2s):

* moments:            read x                    -> s      (one pass, shifted float64 sums)
* normalize:          read x, write y           -> 2s     (one fused multiply-add per element)
* training forward:   moments + normalize       -> 3s     (1.5x a copy)
* backward reduce:    read x, dy                -> 2s
* backward apply:     read x, dy, write dx      -> 3s     (5s in total for the backward)

Per-channel sums are never parallelized over C alone (C can be 3 or 64 with huge N*L): the work
is cut into ``units`` = (n, c, chunk of L) for the (N, C, L) layout or (n, l) rows for the
channels-last layout, units are split into one fixed contiguous block per thread, each block
sums into (C, FOLD) float64 lanes of its own (allocated on its thread: no shared writes across
blocks, and no cache lines moving between cores): a row's SIMD lanes are folded to FOLD lanes
and added onto its channel's, so a short row pays no tree sum of its own. Each block sums its
lanes into its row of a (blocks, C, 1) totals array (_fold_lanes), merged in block order after
the blocks, in the same compiled call (deterministic for a fixed thread count). Every kernel
runs its blocks through ``_blocks.parallel_blocks`` (a block body per pass, compiled into the
kernel; see there why not prange loops in each kernel). Contiguous rows of up to 512
elements go through ``*_rows`` instead: each block hands its range of rows to one intrinsic
(``_simd.vrows0``/``vrows1``) that walks them itself and keeps (C, ROW_LANES) partials;
statistics of rows under 64 elements with many n (backward sums: under 32) go by strips of
(C, L) slab positions instead, summed over each block's n (``_simd.vstrip0``/``vstrip1``), so
the inner loop has no per-row work at all; so do rows of C channels (BatchNorm1d's (N, C) input,
channels-last input), grouped a few rows to a slab. The element-wise passes over such short
rows (BatchNorm1d, channels-last, slabs with L < 32) run as long rows with one row of
per-position parameters (``affine_periodic``, ``bwd_apply_periodic``).
Reductions walk their block's units like an odometer (chunk, c, n): a block costs far more
than a loop iteration, and decoding a unit index takes integer divisions, so
each block decodes its first unit once. Element-wise passes take whole rows only, in nested
(n, c) loops (on rows of 64 the odometer and the piece slicing cost 30% of the pass): the
backend cuts few long rows into pieces by viewing (N, C, L) as (N, C * k, L / k).

Variance uses sums shifted by one sample of each channel (x[0, c, 0]): a one-pass, vectorizable
scheme (no per-element Welford) with no cancellation when |mean| >> std.

Channels-last (strides (L*C, 1, C), i.e. an NHWC tensor seen as NCHW) is handed over as the
transposed (N, L, C) view so C is innermost: each (n, l) row is a contiguous vector of channels
and the per-channel accumulators/scales are plain vectors (vectorizes without reductions).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit

from ._blocks import parallel_blocks
from ._common import (
    HELPER,
    acc_dot2_centered,
    acc_sums_shifted,
    affine_row,
    borrow,
    cast,
    empty,
    finite,
    grad_row,
    lane_shift,
    nonneg,
    sample_shift,
)
from ._simd import FOLD, ROW_LANES, STRIP_NARROW, STRIP_WIDE, vrows0, vrows1, vstrip0, vstrip1
from ._vmap import store_fence, vaffine_each, vgrad_each

#: The fingerprint of the package's compiled code (see _fingerprint): in this file, so
#: that numba's disk cache drops these kernels whenever any of that code changes.
CODE_SHA256 = "6adc431478b936b911208132f5a59a11b8b1334d36670d322a76640b09a89b74"

# ---------------------------------------------------------------- per-channel finishing (serial)
# Run after a kernel's blocks, in the same compiled call: merging the (blocks, C, lanes) partials
# and folding the per-channel coefficients in NumPy cost ~25 us of small-array calls per layer
# call, as much as the whole kernel on a cache-sized input.


@njit(inline="always", **HELPER)
def _total(p, c):
    """Channel c's total of (blocks, C, lanes) partials, in block then lane order."""
    s = 0.0
    for b in range(p.shape[0]):
        for j in range(p.shape[2]):
            s += p[b, c, j]
    return s


@njit(inline="always", **HELPER)
def _moments(p1, p2, k, m):
    """float64 (mean, biased var) per channel from sums shifted by k over m elements, and
    whether they are all finite (float32 lanes overflow on huge input: see _common.finite)."""
    c_ = p1.shape[1]
    mean = empty(c_, np.float64)
    var = empty(c_, np.float64)
    ok = True
    for c in range(c_):
        m1 = _total(p1, c) / m
        mean[c] = k[c] + m1
        var[c] = nonneg(_total(p2, c) / m - m1 * m1)
        ok = ok and finite(mean[c], var[c])
    return mean, var, ok


@njit(inline="always", **HELPER)
def _grad_coeffs(pb, pw, mu, var, eps, weight, m, batch_stats):
    """From the backward sums (sum(dy), sum(dy * (x - mu))): dbias, dweight and the coefficients
    of dx = a * dy - k2 * (x - mu) - k3 (k2 = k3 = 0 with running statistics), and whether
    the sums are all finite (see _moments)."""
    c_ = pb.shape[1]
    dbias = empty(c_, np.float64)
    dweight = empty(c_, np.float64)
    a = empty(c_, np.float64)
    k2 = empty(c_, np.float64)
    k3 = empty(c_, np.float64)
    ok = True
    for c in range(c_):
        sb = _total(pb, c)
        sx = _total(pw, c)
        ok = ok and finite(sb, sx)
        rstd = 1.0 / math.sqrt(numba.float64(var[c]) + eps)
        w = 1.0 if weight is None else numba.float64(weight[c])
        dbias[c] = sb
        dweight[c] = sx * rstd
        a[c] = rstd * w
        if batch_stats:
            k2[c] = rstd * rstd * rstd * w * sx / m
            k3[c] = rstd * w * sb / m
        else:
            k2[c] = 0.0
            k3[c] = 0.0
    return dbias, dweight, a, k2, k3, ok


# ---------------------------------------------------------------- (N, C, L) layout
# Units are (n, c, chunk of L) in C order; ``nchunk`` > 1 only when N*C is too small to keep
# every thread busy. Each kernel walks its block's units with an odometer (no divisions).


@njit(inline="always", **HELPER)
def _unit(u, nchunk, c_):
    """(n, c, ch) of unit number ``u``: the only divisions, once per block."""
    row = u // nchunk
    n = row // c_
    return n, row - n * c_, u - row * nchunk


@njit(inline="always", **HELPER)
def _next_unit(n, c, ch, nchunk, c_):
    """The unit after (n, c, ch), stepped like an odometer (chunk, then c, then n)."""
    ch += 1
    if ch == nchunk:
        ch = 0
        c += 1
        if c == c_:
            c = 0
            n += 1
    return n, c, ch


@njit(inline="always", **HELPER)
def _piece(x, n, c, ch, nchunk):
    """Unit (n, c, ch)'s piece of row x[n, c]: the whole row unless rows are split (whole rows
    skip the slice arithmetic, which costs as much as a short row's work)."""
    if nchunk == 1:
        return x[n, c]
    l_ = x.shape[2]
    return x[n, c, ch * l_ // nchunk:(ch + 1) * l_ // nchunk]


@njit(inline="always", **HELPER)
def _first_samples(x):
    """k[c] = x[0, c, 0] as float64: channel c's sums are shifted by one of its samples (exact
    in x's dtype, so the float32 lanes subtract it exactly; 0 where it is not finite)."""
    k = empty(x.shape[1], np.float64)
    for c in range(x.shape[1]):
        k[c] = sample_shift(x[0, c, 0])
    return k


@njit(inline="always", **HELPER)
def _block_units(x, nchunk, nblk, b):
    """Block b of nblk's units of x: (count, its first unit (n, c, ch)) for the odometer walk."""
    n_, c_, _ = x.shape
    units = n_ * c_ * nchunk
    u0 = b * units // nblk
    n, c, ch = _unit(u0, nchunk, c_)
    return (b + 1) * units // nblk - u0, n, c, ch


@njit(inline="always", **HELPER)
def _block_totals(nblk, c_):
    """Two (nblk, C, 1) float64 arrays: per block, its two sums of each channel (_fold_lanes)."""
    return empty((nblk, c_, 1), np.float64), empty((nblk, c_, 1), np.float64)


@njit(inline="always", **HELPER)
def _fold_lanes(p1, p2, t1, t2, b):
    """Block b's (C, lanes) partials summed in lane order into its totals t1[b], t2[b]. The lanes
    are the block's own (allocated in the block, on its thread): only C totals per block cross
    to the calling thread. Lanes shared in a (blocks, C, lanes) array and merged by the calling
    thread moved every partial's cache lines between cores twice per call: measured A/B (2
    threads, float32 moments) (256, 64, 64) 28 -> 25 us, (2, 64, 64) 3.7 -> 3.2 us."""
    for c in range(p1.shape[0]):
        s1 = 0.0
        s2 = 0.0
        for j in range(p1.shape[1]):
            s1 += p1[c, j]
            s2 += p2[c, j]
        t1[b, c, 0] = s1
        t2[b, c, 0] = s2


@njit(inline="always", **HELPER)
def _units_block(x, k, nchunk, t1, t2, b):
    """Block b of t1.shape[0]: its units' shifted sums into (C, FOLD) lanes, each row adding its
    lanes onto its channel's (no tree sum per row), then folded into t1[b], t2[b]."""
    count, n, c, ch = _block_units(x, nchunk, t1.shape[0], b)
    a1 = np.zeros((x.shape[1], FOLD))
    a2 = np.zeros((x.shape[1], FOLD))
    for _ in range(count):
        acc_sums_shifted(_piece(x, n, c, ch, nchunk), k[c], a1[c], a2[c])
        n, c, ch = _next_unit(n, c, ch, nchunk, x.shape[1])
    _fold_lanes(a1, a2, t1, t2, b)


@njit(inline="always", **HELPER)
def _units_body(b, a):
    x, k, nchunk, t1, t2 = a
    _units_block(x, k, nchunk, t1, t2, b)


@njit(**HELPER)
def moments_ncl(x, nchunk, nblk):
    """Per-channel (mean, var) of (N, C, L) rows cut into ``nchunk`` pieces each, in x's dtype,
    via shifted sums over nblk blocks, and whether the float64 statistics are finite (each
    moments_* kernel returns that flag, see _moments)."""
    x = borrow(x)
    k = _first_samples(x)
    t1, t2 = _block_totals(nblk, x.shape[1])
    parallel_blocks(_units_body, nblk, (x, k, nchunk, t1, t2))
    mean, var, ok = _moments(t1, t2, k, x.shape[0] * x.shape[2])
    return cast(mean, x.dtype), cast(var, x.dtype), ok


@njit(inline="always", **HELPER)
def _lane_sums(c_, dtype):
    """(C, ROW_LANES) float64 partials and scratch lanes of ``dtype`` for the row-range
    intrinsics (which zero them), allocated by the block that uses them."""
    lanes = (c_, ROW_LANES)
    return empty(lanes, np.float64), empty(lanes, np.float64), empty(lanes, dtype), empty(lanes, dtype)


@njit(inline="always", **HELPER)
def _rows_block(x, k, t1, t2, b):
    """Block b of t1.shape[0]: its range of (n, c) rows summed by vrows0, into t1[b], t2[b]."""
    rows = x.shape[0] * x.shape[1]
    nblk = t1.shape[0]
    p1, p2, q1, q2 = _lane_sums(x.shape[1], x.dtype)
    vrows0(x, x, k, b * rows // nblk, (b + 1) * rows // nblk, p1, p2, q1, q2)
    _fold_lanes(p1, p2, t1, t2, b)


@njit(inline="always", **HELPER)
def _rows_body(b, a):
    x, k, t1, t2 = a
    _rows_block(x, k, t1, t2, b)


@njit(**HELPER)
def moments_ncl_rows(x, nblk):
    """moments_ncl over whole contiguous rows of up to 512 elements: each block sums its range
    of (n, c) rows in one intrinsic call (vrows0), with no per-row slicing or odometer in numba."""
    x = borrow(x)
    k = _first_samples(x)
    t1, t2 = _block_totals(nblk, x.shape[1])
    parallel_blocks(_rows_body, nblk, (x, k, t1, t2))
    mean, var, ok = _moments(t1, t2, k, x.shape[0] * x.shape[2])
    return cast(mean, x.dtype), cast(var, x.dtype), ok


@njit(inline="always", **HELPER)
def _row_span(r0, r1, c_):
    """Rows r0..r1 (in (n, c) order) as (n0, c0, n_end, c1): rows (n, c) with n0 <= n < n_end,
    c >= c0 where n == n0 and c < c1 where n == n_end - 1 (c1 = C when the span ends on a whole
    n, so no n past the span is ever indexed)."""
    n0 = r0 // c_
    n1 = (r1 - 1) // c_
    return n0, r0 - n0 * c_, n1 + 1, r1 - n1 * c_


# Strip kernels take slabs of Q positions, position j of a slab in channel (j // inner) % C:
# (N, C, L) with contiguous (C, L) slabs (inner = L), or rows of C channels grouped r at a time
# into slabs of r * C (inner = 1: BatchNorm1d's (N, C) and channels-last input), viewed as
# (slabs, Q, 1) by the backend.


# The per-position rows and sums of slab rows and periodic rows (_position_shifts, _onto_channels,
# _position_rows, _repeat_rows) loop per channel over its positions with a while loop, not
# range(c * inner, q, C * inner): a stepped range's trip count is an integer division per channel
# (and a division per position would cost more than a small input's whole pass). Measured (C =
# 512, 2 threads): BatchNorm1d (64, 512) training forward 26.5 -> 22.4 us, (32, 2048) 52 -> 42 us,
# its backward 54 -> 42 us. Walking a period at a time in position order was as fast and cost
# 0.3 s more cold compile.


@njit(inline="always", **HELPER)
def _slab_shifts(x, c_):
    """k[c]: one sample of channel c, float64: x[0, c, 0] in both strip views ((N, C, L) slabs,
    channel c's row starting at position c * L, and (S, r * C, 1) rows of C channels); 0 where
    it is not finite."""
    k = empty(c_, np.float64)
    for c in range(c_):
        k[c] = sample_shift(x[0, c, 0])
    return k


@njit(inline="always", **HELPER)
def _position_shifts(x, c_, inner, shift):
    """kp[j] = shift[(j // inner) % C] in x's dtype: the per-position shifts of the strip
    intrinsics (which must be exact in x's dtype; the callers' are)."""
    q = x.shape[1] * x.shape[2]
    kp = empty(q, x.dtype)
    for c in range(c_):  # loops: a slice assignment here becomes a parfor (see above)
        j0 = c * inner
        while j0 < q:
            for j in range(j0, j0 + inner):
                kp[j] = shift[c]
            j0 += c_ * inner
    return kp


@njit(inline="always", **HELPER)
def _strip_partials(nblk, q, c_):
    """Per-block (Q,) position sums and (C, 1) channel sums, float64."""
    f8 = np.float64
    return empty((nblk, q), f8), empty((nblk, q), f8), empty((nblk, c_, 1), f8), empty((nblk, c_, 1), f8)


@njit(inline="always", **HELPER)
def _onto_channels(o1, o2, s1, s2, b, inner):
    """Block b's position sums folded into its channel sums (position j into (j // inner) % C)."""
    c_ = s1.shape[1]
    q = o1.shape[1]
    for c in range(c_):
        t1 = 0.0
        t2 = 0.0
        j0 = c * inner
        while j0 < q:  # (see above _slab_shifts)
            for j in range(j0, j0 + inner):
                t1 += o1[b, j]
                t2 += o2[b, j]
            j0 += c_ * inner
        s1[b, c, 0] = t1
        s2[b, c, 0] = t2


@njit(inline="always", **HELPER)
def _strips_block(x, kp, inner, o1, o2, s1, s2, b):
    """Block b of o1.shape[0]: its range of slabs summed per position, a strip of positions at
    a time (vstrip0: the inner loop is over slabs, with no per-row work beyond the loads), into
    o1[b], o2[b], then folded into its channel sums s1[b], s2[b]."""
    n_ = x.shape[0]
    nblk = o1.shape[0]
    q = o1.shape[1]
    width = STRIP_WIDE if q >= STRIP_WIDE else STRIP_NARROW  # as vstrip0 chooses
    for j0 in range(0, q, width):
        vstrip0(x, x, kp, b * n_ // nblk, (b + 1) * n_ // nblk, j0, o1[b], o2[b])
    _onto_channels(o1, o2, s1, s2, b, inner)


@njit(inline="always", **HELPER)
def _strips_body(b, a):
    x, kp, inner, o1, o2, s1, s2 = a
    _strips_block(x, kp, inner, o1, o2, s1, s2, b)


@njit(**HELPER)
def moments_ncl_strips(x, c_, inner, nblk):
    """moments_ncl over slabs of C channels by strips of positions (see _strips_block)."""
    x = borrow(x)
    k = _slab_shifts(x, c_)
    kp = _position_shifts(x, c_, inner, k)
    o1, o2, s1, s2 = _strip_partials(nblk, x.shape[1] * x.shape[2], c_)
    parallel_blocks(_strips_body, nblk, (x, kp, inner, o1, o2, s1, s2))
    mean, var, ok = _moments(s1, s2, k, x.size // c_)
    return cast(mean, x.dtype), cast(var, x.dtype), ok


@njit(inline="always", **HELPER)
def _affine_rows(x, y, mu, scale, shift, r0, r1, stream):
    """affine_row over whole rows r0..r1: nested (n, c) loops, the cheapest walk (a row of 64
    elements is a few vectors, so the walk's own cost shows)."""
    n0, c0, n_end, c1 = _row_span(r0, r1, x.shape[1])
    for n in range(n0, n_end):
        xn = x[n]
        yn = y[n]
        for c in range(c0 if n == n0 else 0, c1 if n == n_end - 1 else x.shape[1]):
            affine_row(xn[c], yn[c], mu[c], scale[c], shift[c], stream)


@njit(inline="always", **HELPER)
def _centered(mean, var, eps, weight, bias):
    """(mean, scale, bias) for y = (x - mean) * scale + bias, float64: every element-wise
    BatchNorm pass uses this centred form (it keeps _vmap's float32 lanes accurate when
    |mean| >> std)."""
    c_ = mean.shape[0]
    mu = empty(c_, np.float64)
    scale = empty(c_, np.float64)
    shift = empty(c_, np.float64)
    for c in range(c_):
        a = 1.0 / math.sqrt(numba.float64(var[c]) + eps)
        mu[c] = numba.float64(mean[c])
        scale[c] = a if weight is None else a * numba.float64(weight[c])
        shift[c] = 0.0 if bias is None else numba.float64(bias[c])
    return mu, scale, shift


# The element-wise kernels come in two: cached stores and non-temporal ones (``*_nt``, an
# output past the cache, see _vmap). The flag is a constant inside each, so the cached one has no
# per-row alignment head (8-15% on rows of 49..784), and only the one a call needs compiles
# (one kernel branching on a constant flag costs 0.5 s more cold compile).


@njit(inline="always", **HELPER)
def _affine_block(x, y, mu, scale, shift, b, nblk):
    """Block b of nblk: its range of (n, c) rows normalized (cached stores)."""
    rows = x.shape[0] * x.shape[1]
    _affine_rows(x, y, mu, scale, shift, b * rows // nblk, (b + 1) * rows // nblk, False)


@njit(inline="always", **HELPER)
def _affine_body(b, a):
    x, y, mu, scale, shift, nblk = a
    _affine_block(x, y, mu, scale, shift, b, nblk)


@njit(inline="always", **HELPER)
def _affine_nt_body(b, a):
    x, y, mu, scale, shift, nblk = a
    rows = x.shape[0] * x.shape[1]
    _affine_rows(x, y, mu, scale, shift, b * rows // nblk, (b + 1) * rows // nblk, True)
    store_fence()


@njit(**HELPER)
def affine_ncl(x, mean, var, eps, weight, bias, y, nblk):
    """y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c] as one multiply-add, whole
    rows, cached stores. Whole rows only: the backend hands few long rows over cut into pieces
    (a (N, C * k, L / k) view, the statistics repeated)."""
    x, y = borrow((x, y))
    mu, scale, shift = _centered(mean, var, eps, weight, bias)
    parallel_blocks(_affine_body, nblk, (x, y, mu, scale, shift, nblk))


# ---------------------------------------------------------------- periodic rows
# Short rows (BatchNorm1d's (N, C) input, channels-last rows of C, (N, C, L) slabs with L < 64)
# seen as rows of Q elements whose channel is periodic: channel (j // inner) % C of position j.
# One row of per-position parameters serves every row, so the element-wise pass is one map per
# long row, with no per-channel work inside it.


@njit(inline="always", **HELPER)
def _line_aligned(q, like):
    """An empty row of q elements in like's dtype starting on a 64-byte line (Numba's own
    allocations are 32-byte aligned: half the vector loads of a parameter row crossed lines)."""
    item = like.itemsize
    buf = empty(q + 64 // item, like.dtype)
    first = ((-buf.ctypes.data) % 64) // item
    return buf[first:first + q]


@njit(inline="always", **HELPER)
def _position_rows(mean, var, eps, weight, bias, q, inner, like, h):
    """Per-position (c, a, s) rows of q elements in like's dtype for vaffine_each: y = (x - c) *
    a + s is BatchNorm's centred scale and shift (_centered), with c rounded to like's dtype and
    that rounding folded into s (as _vmap._affine_value32). Rotated by h: element j of a row
    is position (j + h) % q (see _periodic_block); line-aligned."""
    mu, scale, shift = _centered(mean, var, eps, weight, bias)
    c_ = mu.shape[0]
    cr = _line_aligned(q, like)
    ar = _line_aligned(q, like)
    sr = _line_aligned(q, like)
    for ch in range(c_):  # loops, not j // inner % C: a division per position costs as much
        first = ch * inner - h  # as the whole pass on a small input
        first += q if first < 0 else 0
        cr[first] = mu[ch]  # c rounded to like's dtype
        c32 = cr[first]
        sh = shift[ch] + (numba.float64(c32) - mu[ch]) * scale[ch]
        j0 = ch * inner
        while j0 < q:  # (see above _slab_shifts)
            for j in range(j0 - h, j0 - h + inner):
                jj = j + q if j < 0 else j
                cr[jj] = c32
                ar[jj] = scale[ch]
                sr[jj] = sh
            j0 += c_ * inner
    return cr, ar, sr


@njit(inline="always", **HELPER)
def _periodic_block(x2, y2, ends, cr, ar, sr, b, nblk, stream):
    """Block b of nblk: its range of (G, Q) rows through vaffine_each. ``ends`` = (x head, y
    head, x tail, y tail), empty or not: x2 and y2 are then rows from h = len(head) elements
    into the flat arrays (so that their rows start on a line, as the rotated parameter rows
    do), the head is the first row's first h elements and the tail the last row's rest."""
    rows = x2.shape[0]
    for r in range(b * rows // nblk, (b + 1) * rows // nblk):
        vaffine_each(x2[r], y2[r], cr, ar, sr, stream)
    xh, yh, xt, yt = ends
    q = x2.shape[1]
    if b == 0 and xh.size > 0:
        h = q - xh.size
        vaffine_each(xh, yh, cr[h:], ar[h:], sr[h:], stream)
    if b == nblk - 1 and xt.size > 0:
        vaffine_each(xt, yt, cr, ar, sr, stream)


@njit(inline="always", **HELPER)
def _periodic_body(b, a):
    x2, y2, ends, cr, ar, sr, nblk = a
    _periodic_block(x2, y2, ends, cr, ar, sr, b, nblk, False)


@njit(inline="always", **HELPER)
def _periodic_nt_body(b, a):
    x2, y2, ends, cr, ar, sr, nblk = a
    _periodic_block(x2, y2, ends, cr, ar, sr, b, nblk, True)
    store_fence()


@njit(**HELPER)
def affine_periodic(x2, ends, mean, var, eps, weight, bias, inner, y2, nblk):
    """affine_ncl over (G, Q) rows of periodic channels (see above)."""
    x2, y2 = borrow((x2, y2))
    cr, ar, sr = _position_rows(mean, var, eps, weight, bias, x2.shape[1], inner, x2,
                                ends[0].size)
    parallel_blocks(_periodic_body, nblk, (x2, y2, ends, cr, ar, sr, nblk))


@njit(**HELPER)
def affine_periodic_nt(x2, ends, mean, var, eps, weight, bias, inner, y2, nblk):
    """affine_periodic with non-temporal stores."""
    x2, y2 = borrow((x2, y2))
    cr, ar, sr = _position_rows(mean, var, eps, weight, bias, x2.shape[1], inner, x2,
                                ends[0].size)
    parallel_blocks(_periodic_nt_body, nblk, (x2, y2, ends, cr, ar, sr, nblk))


@njit(inline="always", **HELPER)
def _repeat_rows(q, inner, a, k2, mu, k3):
    """The per-channel float64 coefficients of bwd_apply as (4, q) rows of positions (channel
    (j // inner) % C of position j)."""
    c_ = a.shape[0]
    out = empty((4, q), np.float64)
    for ch in range(c_):
        j0 = ch * inner
        while j0 < q:  # (see above _slab_shifts)
            for j in range(j0, j0 + inner):
                out[0, j] = a[ch]
                out[1, j] = k2[ch]
                out[2, j] = mu[ch]
                out[3, j] = k3[ch]
            j0 += c_ * inner
    return out


@njit(inline="always", **HELPER)
def _grad_periodic_block(dy2, x2, dx2, p, b, nblk, stream):
    """Block b of nblk: its range of (G, Q) rows through vgrad_each with the (4, Q) rows p."""
    rows = x2.shape[0]
    for r in range(b * rows // nblk, (b + 1) * rows // nblk):
        vgrad_each(dy2[r], x2[r], dx2[r], p[0], p[1], p[2], p[3], stream)


@njit(inline="always", **HELPER)
def _grad_periodic_body(b, a):
    dy2, x2, dx2, p, nblk = a
    _grad_periodic_block(dy2, x2, dx2, p, b, nblk, False)


@njit(inline="always", **HELPER)
def _grad_periodic_nt_body(b, a):
    dy2, x2, dx2, p, nblk = a
    _grad_periodic_block(dy2, x2, dx2, p, b, nblk, True)
    store_fence()


@njit(**HELPER)
def bwd_apply_periodic(dy2, x2, mu, a, k2, k3, inner, dx2, nblk):
    """bwd_apply_ncl over (G, Q) rows of periodic channels (as affine_periodic)."""
    dy2, x2, dx2 = borrow((dy2, x2, dx2))
    p = _repeat_rows(x2.shape[1], inner, a, k2, mu, k3)
    parallel_blocks(_grad_periodic_body, nblk, (dy2, x2, dx2, p, nblk))


@njit(**HELPER)
def bwd_apply_periodic_nt(dy2, x2, mu, a, k2, k3, inner, dx2, nblk):
    """bwd_apply_periodic with non-temporal stores."""
    dy2, x2, dx2 = borrow((dy2, x2, dx2))
    p = _repeat_rows(x2.shape[1], inner, a, k2, mu, k3)
    parallel_blocks(_grad_periodic_nt_body, nblk, (dy2, x2, dx2, p, nblk))


# Training forward in one call: statistics, then the normalize pass with them (rounded to the
# statistics' dtype, as channel_normalize gets them: a float32 variance past float32's range is
# inf and the output 0, as the reference and torch give it), one compiled call instead of two.
# For cache-sized inputs, where a layer call's fixed costs show: measured (2 threads)
# BatchNorm2d (256, 64, 8, 8) float32 108 -> 96 us, (8, 256, 28, 28) 170 -> 160 us,
# (2, 4, 2, 2) 16.5 -> 9.3 us.
# The two passes are two parallel_blocks calls (block b's sums, then its rows normalized), with
# the statistics finished in between.
# They also update the running statistics (rm, rv: new_mean, new_var; rm empty: no update), as
# running_update after them would, which saves that kernel's call and its compile.


@njit(inline="always", **HELPER)
def _batch_out(x, mean, var, rm, rv, momentum, correction, new_mean, new_var):
    """The float64 statistics rounded to x's dtype, and from them (as running_update takes
    them) the running statistics' update when rm is not empty (the loop written out here: one
    more inlined helper costs more compile time than these lines)."""
    m = cast(mean, x.dtype)
    v = cast(var, x.dtype)
    keep = 1.0 - momentum
    for c in range(rm.shape[0]):
        new_mean[c] = keep * numba.float64(rm[c]) + momentum * numba.float64(m[c])
        new_var[c] = keep * numba.float64(rv[c]) + momentum * (numba.float64(v[c]) * correction)
    return m, v


@njit(**HELPER)
def batch_ncl(x, nchunk, nsum, eps, weight, bias, y, nblk, rm, rv, momentum, correction,
              new_mean, new_var):
    """moments_ncl (nsum blocks), then affine_ncl into y with the statistics (see above)."""
    x, y = borrow((x, y))
    k = _first_samples(x)
    t1, t2 = _block_totals(nsum, x.shape[1])
    parallel_blocks(_units_body, nsum, (x, k, nchunk, t1, t2))
    mean, var, ok = _moments(t1, t2, k, x.shape[0] * x.shape[2])
    m, v = _batch_out(x, mean, var, rm, rv, momentum, correction, new_mean, new_var)
    mu, scale, shift = _centered(m, v, eps, weight, bias)
    parallel_blocks(_affine_body, nblk, (x, y, mu, scale, shift, nblk))
    return m, v, ok


@njit(**HELPER)
def batch_ncl_strips(x, eps, weight, bias, y, nblk, rm, rv, momentum, correction,
                     new_mean, new_var):
    """moments_ncl_strips of (N, C, L) with contiguous (C, L) slabs, then affine_ncl into y with
    the statistics (see above)."""
    x, y = borrow((x, y))
    c_ = x.shape[1]
    l_ = x.shape[2]
    k = _slab_shifts(x, c_)
    kp = _position_shifts(x, c_, l_, k)
    o1, o2, s1, s2 = _strip_partials(nblk, c_ * l_, c_)
    parallel_blocks(_strips_body, nblk, (x, kp, l_, o1, o2, s1, s2))
    mean, var, ok = _moments(s1, s2, k, x.shape[0] * l_)
    m, v = _batch_out(x, mean, var, rm, rv, momentum, correction, new_mean, new_var)
    mu, scale, shift = _centered(m, v, eps, weight, bias)
    parallel_blocks(_affine_body, nblk, (x, y, mu, scale, shift, nblk))
    return m, v, ok


@njit(**HELPER)
def batch_periodic(xs, c_, inner_s, x2, ends, inner, eps, weight, bias, y2, nblk, nblk2, rm, rv,
                   momentum, correction, new_mean, new_var):
    """moments_ncl_strips over the slabs xs, then affine_periodic over x2 (the (G, Q) view of the
    same array) into y2: the fused forward of cache-sized rows of C channels (BatchNorm1d's
    (N, C), small channels-last input), one kernel call where it took three."""
    xs, x2, y2 = borrow((xs, x2, y2))
    k = _slab_shifts(xs, c_)
    kp = _position_shifts(xs, c_, inner_s, k)
    o1, o2, s1, s2 = _strip_partials(nblk, xs.shape[1] * xs.shape[2], c_)
    parallel_blocks(_strips_body, nblk, (xs, kp, inner_s, o1, o2, s1, s2))
    mean, var, ok = _moments(s1, s2, k, xs.size // c_)
    m, v = _batch_out(xs, mean, var, rm, rv, momentum, correction, new_mean, new_var)
    cr, ar, sr = _position_rows(m, v, eps, weight, bias, x2.shape[1], inner, x2, ends[0].size)
    parallel_blocks(_periodic_body, nblk2, (x2, y2, ends, cr, ar, sr, nblk2))
    return m, v, ok


@njit(**HELPER)
def batch_ncl_rows(x, eps, weight, bias, y, nblk, rm, rv, momentum, correction,
                   new_mean, new_var):
    """moments_ncl_rows, then affine_ncl into y with the statistics (see above)."""
    x, y = borrow((x, y))
    k = _first_samples(x)
    t1, t2 = _block_totals(nblk, x.shape[1])
    parallel_blocks(_rows_body, nblk, (x, k, t1, t2))
    mean, var, ok = _moments(t1, t2, k, x.shape[0] * x.shape[2])
    m, v = _batch_out(x, mean, var, rm, rv, momentum, correction, new_mean, new_var)
    mu, scale, shift = _centered(m, v, eps, weight, bias)
    parallel_blocks(_affine_body, nblk, (x, y, mu, scale, shift, nblk))
    return m, v, ok


@njit(**HELPER)
def affine_ncl_nt(x, mean, var, eps, weight, bias, y, nblk):
    """affine_ncl with non-temporal stores."""
    x, y = borrow((x, y))
    mu, scale, shift = _centered(mean, var, eps, weight, bias)
    parallel_blocks(_affine_nt_body, nblk, (x, y, mu, scale, shift, nblk))


@njit(inline="always", **HELPER)
def _onto_mu(dy, x, mu, pb, pw):
    """Move the second backward sums from lane_shift(mu) onto mu: sum(dy * (x - mu)) = sum(dy *
    (x - mu')) + (mu' - mu) * sum(dy), added once to block 0's lane 0 (after the blocks)."""
    for c in range(pb.shape[1]):
        d = lane_shift(dy, x, mu[c]) - mu[c]
        if d != 0.0:
            s = 0.0
            for b in range(pb.shape[0]):  # loops: an array .sum() here becomes a nested parfor,
                for j in range(pb.shape[2]):  # which costs compile time
                    s += pb[b, c, j]
            pw[0, c, 0] += d * s


@njit(inline="always", **HELPER)
def _units_grad_body(b, a):
    dy, x, mu, nchunk, pb, pw = a
    count, n, c, ch = _block_units(x, nchunk, pb.shape[0], b)
    a1 = np.zeros((x.shape[1], FOLD))
    a2 = np.zeros((x.shape[1], FOLD))
    for _ in range(count):
        acc_dot2_centered(_piece(dy, n, c, ch, nchunk), _piece(x, n, c, ch, nchunk), mu[c], a1[c], a2[c])
        n, c, ch = _next_unit(n, c, ch, nchunk, x.shape[1])
    _fold_lanes(a1, a2, pb, pw, b)


@njit(**HELPER)
def bwd_reduce_ncl(dy, x, mu, var, eps, weight, batch_stats, nchunk, nblk):
    """_grad_coeffs of the per-channel (sum(dy), sum(dy * (x - mu))), summed over nblk blocks as
    moments_ncl; the second about lane_shift(x, mu) (see acc_dot2_centered)."""
    dy, x = borrow((dy, x))
    n_ = x.shape[0]
    pb, pw = _block_totals(nblk, x.shape[1])
    parallel_blocks(_units_grad_body, nblk, (dy, x, mu, nchunk, pb, pw))
    _onto_mu(dy, x, mu, pb, pw)
    return _grad_coeffs(pb, pw, mu, var, eps, weight, n_ * x.shape[2], batch_stats)


@njit(inline="always", **HELPER)
def _rows_grad_body(b, a):
    dy, x, mu, pb, pw, rows, nblk = a
    p1, p2, q1, q2 = _lane_sums(x.shape[1], x.dtype)
    vrows1(x, dy, mu, b * rows // nblk, (b + 1) * rows // nblk, p1, p2, q1, q2)
    _fold_lanes(p1, p2, pb, pw, b)


@njit(**HELPER)
def bwd_reduce_ncl_rows(dy, x, mu, var, eps, weight, batch_stats, nblk):
    """bwd_reduce_ncl for whole contiguous rows of up to 512 elements (vrows1, as
    moments_ncl_rows)."""
    dy, x = borrow((dy, x))
    n_, c_, l_ = x.shape
    rows = n_ * c_
    pb, pw = _block_totals(nblk, c_)
    parallel_blocks(_rows_grad_body, nblk, (dy, x, mu, pb, pw, rows, nblk))
    _onto_mu(dy, x, mu, pb, pw)
    return _grad_coeffs(pb, pw, mu, var, eps, weight, n_ * l_, batch_stats)


@njit(inline="always", **HELPER)
def _strips_grad_body(b, a):
    dy, x, kp, q, o1, o2, pb, pw, inner = a
    n_ = x.shape[0]
    nblk = o1.shape[0]
    width = STRIP_WIDE if q >= STRIP_WIDE else STRIP_NARROW  # as vstrip1 chooses
    for j0 in range(0, q, width):
        vstrip1(x, dy, kp, b * n_ // nblk, (b + 1) * n_ // nblk, j0, o1[b], o2[b])
    _onto_channels(o1, o2, pb, pw, b, inner)


@njit(**HELPER)
def bwd_reduce_ncl_strips(dy, x, mu, var, eps, weight, batch_stats, inner, nblk):
    """bwd_reduce_ncl over slabs of positions of x and dy by strips (vstrip1, as
    moments_ncl_strips; C = mu's length); dy and x of one dtype."""
    dy, x = borrow((dy, x))
    n_ = x.shape[0]
    c_ = mu.shape[0]
    q = x.shape[1] * x.shape[2]
    shift = empty(c_, np.float64)
    for c in range(c_):
        shift[c] = lane_shift(dy, x, mu[c])
    kp = _position_shifts(x, c_, inner, shift)
    o1, o2, pb, pw = _strip_partials(nblk, q, c_)
    parallel_blocks(_strips_grad_body, nblk, (dy, x, kp, q, o1, o2, pb, pw, inner))
    _onto_mu(dy, x, mu, pb, pw)
    return _grad_coeffs(pb, pw, mu, var, eps, weight, n_ * q // c_, batch_stats)


@njit(inline="always", **HELPER)
def _grad_rows(dy, x, mu, a, k2, k3, dx, r0, r1, stream):
    """grad_row over whole rows r0..r1 (see _affine_rows)."""
    n0, c0, n_end, c1 = _row_span(r0, r1, x.shape[1])
    for n in range(n0, n_end):
        dyn = dy[n]
        xn = x[n]
        dxn = dx[n]
        for c in range(c0 if n == n0 else 0, c1 if n == n_end - 1 else x.shape[1]):
            grad_row(dyn[c], xn[c], dxn[c], a[c], k2[c], mu[c], k3[c], stream)


@njit(inline="always", **HELPER)
def _grad_body(b, a):
    dy, x, mu, ak, k2, k3, dx, rows, nblk = a
    _grad_rows(dy, x, mu, ak, k2, k3, dx, b * rows // nblk, (b + 1) * rows // nblk, False)


@njit(inline="always", **HELPER)
def _grad_nt_body(b, a):
    dy, x, mu, ak, k2, k3, dx, rows, nblk = a
    _grad_rows(dy, x, mu, ak, k2, k3, dx, b * rows // nblk, (b + 1) * rows // nblk, True)
    store_fence()


@njit(**HELPER)
def bwd_apply_ncl(dy, x, mu, a, k2, k3, dx, nblk):
    """dx = a[c] * dy - k2[c] * (x - mu[c]) - k3[c], whole rows (as affine_ncl)."""
    dy, x, dx = borrow((dy, x, dx))
    rows = x.shape[0] * x.shape[1]
    parallel_blocks(_grad_body, nblk, (dy, x, mu, a, k2, k3, dx, rows, nblk))


@njit(**HELPER)
def bwd_apply_ncl_nt(dy, x, mu, a, k2, k3, dx, nblk):
    """bwd_apply_ncl with non-temporal stores."""
    dy, x, dx = borrow((dy, x, dx))
    rows = x.shape[0] * x.shape[1]
    parallel_blocks(_grad_nt_body, nblk, (dy, x, mu, a, k2, k3, dx, rows, nblk))


@njit(**HELPER)
def bwd_ncl_rows(dy, x, mu, var, eps, weight, batch_stats, nblk, dx):
    """bwd_reduce_ncl_rows, then bwd_apply_ncl into dx (cached stores), in one call. Returns
    (dbias, dweight, finite: see _grad_coeffs)."""
    dy, x, dx = borrow((dy, x, dx))
    n_, c_, l_ = x.shape
    rows = n_ * c_
    pb, pw = _block_totals(nblk, c_)
    parallel_blocks(_rows_grad_body, nblk, (dy, x, mu, pb, pw, rows, nblk))
    _onto_mu(dy, x, mu, pb, pw)
    dbias, dweight, a, k2, k3, ok = _grad_coeffs(pb, pw, mu, var, eps, weight, n_ * l_,
                                                 batch_stats)
    parallel_blocks(_grad_body, nblk, (dy, x, mu, a, k2, k3, dx, rows, nblk))
    return dbias, dweight, ok


# ---------------------------------------------------------------- channels-last: (N, L, C) view
# Units are (n, l) rows of C channels; blocks walk them with an (l, n) odometer.


@njit(**HELPER)
def _next_row(n, l, l_):
    l += 1
    if l == l_:
        return n + 1, 0
    return n, l


@njit(inline="always", **HELPER)
def _nlc_sums_block(x, k, p1, p2, b):
    """Block b of p1.shape[0]: the shifted sums of its range of (n, l) rows into p1[b], p2[b]."""
    n_, l_, c_ = x.shape
    nblk = p1.shape[0]
    rows = n_ * l_
    a1 = p1[b]
    a2 = p2[b]
    r0 = b * rows // nblk
    r1 = (b + 1) * rows // nblk
    n = r0 // l_
    l = r0 - n * l_
    r = r0
    # two rows at a time, summed in float64 before touching the accumulators: half the
    # accumulator loads/stores, fixed order (deterministic). (Four rows means more arrays
    # than LLVM's runtime alias checks allow, and the loop stops vectorizing.)
    while r + 2 <= r1:
        xa = x[n, l]
        n, l = _next_row(n, l, l_)
        xb = x[n, l]
        n, l = _next_row(n, l, l_)
        for c in range(c_):
            kc = k[c]
            ta = numba.float64(xa[c]) - kc
            tb = numba.float64(xb[c]) - kc
            a1[c] += ta + tb
            a2[c] += ta * ta + tb * tb
        r += 2
    while r < r1:
        xr = x[n, l]
        for c in range(c_):
            t = numba.float64(xr[c]) - k[c]
            a1[c] += t
            a2[c] += t * t
        n, l = _next_row(n, l, l_)
        r += 1


@njit(inline="always", **HELPER)
def _nlc_moments(p1, p2, k, m):
    """_moments of (blocks, C) partials."""
    nblk, c_ = p1.shape
    return _moments(p1.reshape((nblk, c_, 1)), p2.reshape((nblk, c_, 1)), k, m)


@njit(inline="always", **HELPER)
def _nlc_sums_body(b, a):
    x, k, p1, p2 = a
    _nlc_sums_block(x, k, p1, p2, b)


@njit(inline="always", **HELPER)
def _nlc_shifts(x):
    """k[c] = x[0, 0, c] (0 where not finite): _first_samples of the channels-last view."""
    k = empty(x.shape[2], np.float64)
    for c in range(x.shape[2]):
        k[c] = sample_shift(x[0, 0, c])
    return k


@njit(**HELPER)
def moments_nlc(x, p1, p2):
    """moments_ncl for the channels-last view; zeroed partials of shape (blocks, C)."""
    x = borrow(x)
    k = _nlc_shifts(x)
    parallel_blocks(_nlc_sums_body, p1.shape[0], (x, k, p1, p2))
    mean, var, ok = _nlc_moments(p1, p2, k, x.shape[0] * x.shape[1])
    return cast(mean, x.dtype), cast(var, x.dtype), ok


@njit(inline="always", **HELPER)
def _nlc_affine_block(x, y, mu, scale, shift, b, nblk):
    """Block b of nblk: its range of (n, l) rows normalized."""
    n_, l_, c_ = x.shape
    rows = n_ * l_
    r0 = b * rows // nblk
    n = r0 // l_
    l = r0 - n * l_
    for _ in range(r0, (b + 1) * rows // nblk):
        xr = x[n, l]
        yr = y[n, l]
        for c in range(c_):
            yr[c] = (numba.float64(xr[c]) - mu[c]) * scale[c] + shift[c]
        l += 1
        if l == l_:
            l = 0
            n += 1


@njit(inline="always", **HELPER)
def _nlc_affine_body(b, a):
    x, y, mu, scale, shift, nblk = a
    _nlc_affine_block(x, y, mu, scale, shift, b, nblk)


@njit(**HELPER)
def affine_nlc(x, mean, var, eps, weight, bias, y, nblk):
    x, y = borrow((x, y))
    mu, scale, shift = _centered(mean, var, eps, weight, bias)
    parallel_blocks(_nlc_affine_body, nblk, (x, y, mu, scale, shift, nblk))


@njit(**HELPER)
def batch_nlc(x, eps, weight, bias, y, nblk, rm, rv, momentum, correction, new_mean, new_var):
    """moments_nlc, then affine_nlc into y with the statistics (the fused forwards of
    the (N, C, L) layout above, for channels-last input too small for the strip kernels: a
    BatchNorm1d of a few rows took three kernel calls, 20 us where one takes 10)."""
    x, y = borrow((x, y))
    c_ = x.shape[2]
    k = _nlc_shifts(x)
    p1 = empty((nblk, c_), np.float64)
    p2 = empty((nblk, c_), np.float64)
    for j in range(nblk):
        for c in range(c_):
            p1[j, c] = 0.0
            p2[j, c] = 0.0
    parallel_blocks(_nlc_sums_body, nblk, (x, k, p1, p2))
    mean, var, ok = _nlc_moments(p1, p2, k, x.shape[0] * x.shape[1])
    m, v = _batch_out(x, mean, var, rm, rv, momentum, correction, new_mean, new_var)
    mu, scale, shift = _centered(m, v, eps, weight, bias)
    parallel_blocks(_nlc_affine_body, nblk, (x, y, mu, scale, shift, nblk))
    return m, v, ok


@njit(inline="always", **HELPER)
def _nlc_grad_sums_block(dy, x, mu, pb, pw, b):
    """Block b of pb.shape[0]: (sum(dy), sum(dy * (x - mu))) of its (n, l) rows into pb[b], pw[b]."""
    n_, l_, c_ = x.shape
    nblk = pb.shape[0]
    rows = n_ * l_
    a1 = pb[b]
    a2 = pw[b]
    r0 = b * rows // nblk
    r1 = (b + 1) * rows // nblk
    n = r0 // l_
    l = r0 - n * l_
    r = r0
    while r + 2 <= r1:  # two rows at a time (see _nlc_sums_block)
        xa = x[n, l]
        ya = dy[n, l]
        n, l = _next_row(n, l, l_)
        xb = x[n, l]
        yb = dy[n, l]
        n, l = _next_row(n, l, l_)
        for c in range(c_):
            m = mu[c]
            ta = numba.float64(ya[c])
            tb = numba.float64(yb[c])
            a1[c] += ta + tb
            a2[c] += ta * (numba.float64(xa[c]) - m) + tb * (numba.float64(xb[c]) - m)
        r += 2
    while r < r1:
        xr = x[n, l]
        dyr = dy[n, l]
        for c in range(c_):
            t = numba.float64(dyr[c])
            a1[c] += t
            a2[c] += t * (numba.float64(xr[c]) - mu[c])
        n, l = _next_row(n, l, l_)
        r += 1


@njit(inline="always", **HELPER)
def _nlc_grad_coeffs(pb, pw, mu, var, eps, weight, m, batch_stats):
    """_grad_coeffs of (blocks, C) partials."""
    nblk, c_ = pb.shape
    return _grad_coeffs(pb.reshape((nblk, c_, 1)), pw.reshape((nblk, c_, 1)), mu, var, eps,
                        weight, m, batch_stats)


@njit(inline="always", **HELPER)
def _nlc_grad_sums_body(b, a):
    dy, x, mu, pb, pw = a
    _nlc_grad_sums_block(dy, x, mu, pb, pw, b)


@njit(**HELPER)
def bwd_reduce_nlc(dy, x, mu, var, eps, weight, batch_stats, pb, pw):
    dy, x = borrow((dy, x))
    parallel_blocks(_nlc_grad_sums_body, pb.shape[0], (dy, x, mu, pb, pw))
    return _nlc_grad_coeffs(pb, pw, mu, var, eps, weight, x.shape[0] * x.shape[1], batch_stats)


@njit(inline="always", **HELPER)
def _nlc_grad_block(dy, x, mu, a, k2, k3, dx, b, nblk):
    """Block b of nblk: dx of its range of (n, l) rows."""
    n_, l_, c_ = x.shape
    rows = n_ * l_
    r0 = b * rows // nblk
    n = r0 // l_
    l = r0 - n * l_
    for _ in range(r0, (b + 1) * rows // nblk):
        xr = x[n, l]
        dyr = dy[n, l]
        dxr = dx[n, l]
        for c in range(c_):
            dxr[c] = a[c] * numba.float64(dyr[c]) - k2[c] * (numba.float64(xr[c]) - mu[c]) - k3[c]
        l += 1
        if l == l_:
            l = 0
            n += 1


@njit(inline="always", **HELPER)
def _nlc_grad_body(b, a):
    dy, x, mu, ak, k2, k3, dx, nblk = a
    _nlc_grad_block(dy, x, mu, ak, k2, k3, dx, b, nblk)


@njit(**HELPER)
def bwd_apply_nlc(dy, x, mu, a, k2, k3, dx, nblk):
    dy, x, dx = borrow((dy, x, dx))
    parallel_blocks(_nlc_grad_body, nblk, (dy, x, mu, a, k2, k3, dx, nblk))


@njit(**HELPER)
def bwd_nlc(dy, x, mu, var, eps, weight, batch_stats, nblk, dx):
    """bwd_reduce_nlc, then bwd_apply_nlc into dx, in one call (as bwd_ncl_rows), for
    channels-last input too small for the strip kernels. Returns (dbias, dweight, finite)."""
    dy, x, dx = borrow((dy, x, dx))
    c_ = x.shape[2]
    pb = empty((nblk, c_), np.float64)
    pw = empty((nblk, c_), np.float64)
    for j in range(nblk):
        for c in range(c_):
            pb[j, c] = 0.0
            pw[j, c] = 0.0
    parallel_blocks(_nlc_grad_sums_body, nblk, (dy, x, mu, pb, pw))
    dbias, dweight, a, k2, k3, ok = _nlc_grad_coeffs(pb, pw, mu, var, eps, weight,
                                                     x.shape[0] * x.shape[1], batch_stats)
    parallel_blocks(_nlc_grad_body, nblk, (dy, x, mu, a, k2, k3, dx, nblk))
    return dbias, dweight, ok


# ---------------------------------------------------------------- running statistics (serial)
@njit(**HELPER)
def running_update(rm, rv, mean, var, momentum, correction, new_mean, new_var):
    """new = (1 - momentum) * running + momentum * batch, with batch averaged over the rows of
    mean and var, (B, C) (float64, rounded once into new_*; the fused forwards do the same for
    B = 1 in _batch_out). O(C): serial; one compiled call replaces ~10 NumPy calls on C-vectors
    (7 us of a BatchNorm call that is 60 us of work on small inputs)."""
    rows, c_ = mean.shape
    keep = 1.0 - momentum
    for c in range(c_):
        bm = 0.0
        bv = 0.0
        for r in range(rows):
            bm += mean[r, c]
            bv += var[r, c]
        new_mean[c] = keep * numba.float64(rm[c]) + momentum * (bm / rows)
        new_var[c] = keep * numba.float64(rv[c]) + momentum * ((bv / rows) * correction)
