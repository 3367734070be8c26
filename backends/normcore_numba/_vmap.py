"""Explicit-SIMD element-wise maps for contiguous 1-D rows, computed in float64 and rounded once
to y's dtype (LLVM vector IR via ``@intrinsic``):

* ``vaffine(x, y, c, a, s, stream)``:              ``y = (x - c) * a + s``    (c, a, s scalars)
* ``vnorm(x, y, w, b, mu, rstd, stream)``:         ``y = ((x - mu) * rstd) * w + b``
* ``vgrad(dy, x, dx, a, k2, mu, k3, stream)``:     ``dx = a * dy - k2 * (x - mu) - k3``
* ``vgradw_sums(dy, x, w, dx, rstd, a2, mu, a3, ...)``: ``dx = rstd * (w * dy - a2 * (x - mu) - a3)``
* ``vaffine_sums``, ``vnorm_sums``: vaffine, vnorm that also return the shifted sums of another
  row (the next one), read in the same loop (see ``_NextRowSums``).

(w, b are rows of any float dtype; the other parameters float64 scalars. When every array of a
map is float32 it runs in float32 lanes, see ``_affine_value32``.)

Why not LLVM's own loop: for a short row (BatchNorm rows of 49..784 elements) it is a 64-element
unrolled body, runtime alias checks between x and y, and a scalar remainder loop, so a 7x7 row
never reaches the vector body. Here every row runs 16-element vectors and at most 15 scalar
elements, with no alias checks (the backend allocates y: x and y never partially overlap).
Results equal the scalar loop's bit for bit (the same float64 operations per element, no
contraction).

float32 lanes for float32 rows (``value32``): ``t = x - c`` in float32, then one fused
multiply-add with c's rounding folded into the constant (LayerNorm: subtracted, as w varies),
a few float32 ulps from the float64 result even at |mean| >> std; the head and tail elements use
the same float32 operations, so every element has one result whichever path it takes. Measured
(2 threads, one process, A/B): GroupNorm forward on a cache-sized 4 MB 80 -> 71 us, InstanceNorm
77 -> 65 us; on 16 MB, when the host's memory is the limit, 3-5%; BatchNorm normalize even.
The fused loops (normalize one row while summing the next) wait on their arithmetic once the
data is in cache; the plain maps wait on memory either way.

``stream=True`` writes the vector body with non-temporal stores (``!nontemporal``; MOVNT on
x86), after a scalar head that brings y to a 64-byte boundary. A normal store first reads the
line it writes (read-for-ownership): when the pass's arrays do not fit in the last-level cache
together that is one more memory stream (skipping it made a 16 MB GroupNorm forward 16% faster
and its backward 33%). For outputs that fit in cache streaming is slower (the next reader
misses), so the backend asks for it only then (``backend._stream``). A kernel that streams
calls ``store_fence()`` once at the end of each block, so the stores are visible to other
threads when the parallel region joins.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._simd import _F32, FLUSH, UNROLL, _convert, _hsum, _splat, shift_moved

W = 16
ALIGN = 64
_F64 = ir.DoubleType()


def _row_map(context, builder, ins, y_ty, y, stream, value, also=None, value32=None):
    """Emit ``y[i] = value([u[i] as float64 for u in ins], i, lanes)`` over contiguous rows of one
    length, 16 lanes at a time; ``ins`` is a list of (numba type, value) and ``value`` gets float64
    scalars (lanes 0) or <16 x double> vectors and returns the same shape. ``also(i, lanes)``,
    when given, runs in the same loop steps (the next row's sums, see ``_NextRowSums``).
    ``value32``, when given and every array is float32, computes instead, on float32 scalars
    and <16 x float> vectors as loaded (the same operations on both: one result per element
    whichever path it takes)."""
    arrs = [(context.make_array(t)(context, builder, v), t) for t, v in ins]
    ay = context.make_array(y_ty)(context, builder, y)
    n = builder.extract_value(arrs[0][0].shape, 0)
    const = lambda v: ir.Constant(n.type, v)  # noqa: E731
    ye, ysize = context.get_data_type(y_ty.dtype), y_ty.dtype.bitwidth // 8
    nt_md = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
    narrow = value32 is not None and all(t.dtype == types.float32 for t, _ in ins) and ye == _F32

    def at(arr, elt, i, lanes):
        p = builder.gep(arr.data, [i], inbounds=True)
        return builder.bitcast(p, ir.VectorType(elt, lanes).as_pointer()) if lanes else p

    def load(i, lanes):
        out = []
        for arr, t in arrs:
            elt = context.get_data_type(t.dtype)
            v = builder.load(at(arr, elt, i, lanes), align=t.dtype.bitwidth // 8)
            if not narrow:
                v = _convert(builder, v, ir.VectorType(_F64, lanes) if lanes else _F64)
            out.append(v)
        return out

    def scalar(i):
        r = (value32 if narrow else value)(load(i, 0), i, 0)
        builder.store(_convert(builder, r, ye), at(ay, ye, i, 0))
        if also is not None:
            also(i, 0)

    def vectors(first, count, nontemporal):
        """``count`` vectors from element ``first`` on; in blocks of FLUSH (a loop over UNROLL
        unrolled) when ``also`` sums in float32 blocks (its begin/end around each block)."""

        def one(j):  # vector j: elements first + j*W ...
            i = builder.add(first, builder.mul(j, const(W)))
            r = (value32 if narrow else value)(load(i, W), i, W)
            r = _convert(builder, r, ir.VectorType(ye, W))
            st = builder.store(r, at(ay, ye, i, W), align=ALIGN if nontemporal else ysize)
            if nontemporal:
                st.set_metadata("nontemporal", nt_md)
            if also is not None:
                also(i, W)

        if also is None or not also.blocked:
            with cgutils.for_range(builder, count) as loop:
                one(loop.index)
            return
        nblk = builder.sdiv(count, const(FLUSH))
        with cgutils.for_range(builder, nblk) as blk:
            also.begin()
            with cgutils.for_range(builder, const(FLUSH // UNROLL)) as loop:
                u0 = builder.add(builder.mul(blk.index, const(FLUSH)), builder.mul(loop.index, const(UNROLL)))
                for j in range(UNROLL):
                    one(builder.add(u0, const(j)))
            also.end()
        done = builder.mul(nblk, const(FLUSH))
        with builder.if_then(builder.icmp_signed("<", done, count)):
            also.begin()
            with cgutils.for_range(builder, builder.sub(count, done)) as loop:
                one(builder.add(done, loop.index))
            also.end()

    # head: elements before y's first 64-byte boundary (streaming only; 0 otherwise)
    # a constant flag (a kernel that branches on it and passes True/False) emits only its own
    # path: half the IR to optimize per call site, so hoisting the branch costs no compile time
    fixed = bool(stream.constant) if isinstance(stream, ir.Constant) else None
    if fixed is False:
        head = const(0)
    else:
        mis = builder.and_(builder.ptrtoint(ay.data, n.type), const(ALIGN - 1))
        to_line = builder.udiv(builder.and_(builder.sub(const(ALIGN), mis), const(ALIGN - 1)), const(ysize))
        head = to_line if fixed else builder.select(stream, to_line, const(0))
        head = builder.select(builder.icmp_signed(">", head, n), n, head)
        with cgutils.for_range(builder, head) as loop:
            scalar(loop.index)
    nvec = builder.sdiv(builder.sub(n, head), const(W))
    if fixed is None:
        with builder.if_else(stream) as (streamed, cached):
            with streamed:
                vectors(head, nvec, True)
            with cached:
                vectors(head, nvec, False)
    else:
        vectors(head, nvec, fixed)
    tail = builder.add(head, builder.mul(nvec, const(W)))
    with cgutils.for_range_slice(builder, tail, n, const(1)) as (i, _):
        scalar(i)


def _scalars(builder, values, lanes):
    """The float64 scalars as they are (lanes 0) or splatted to <lanes x double>."""
    if not lanes:
        return values
    return [_splat(builder, v, ir.VectorType(_F64, lanes)) for v in values]


def _affine_value(builder, args):
    """(x - c) * a + s with (x, y, c, a, s, ...) = args."""

    def value(xs, i, lanes):
        c, a, s = _scalars(builder, args[2:5], lanes)
        return builder.fadd(builder.fmul(builder.fsub(xs[0], c), a), s)

    return value


def _fma(builder, a, b, c):
    """a * b + c rounded once (llvm.fma; one instruction with FMA hardware)."""
    name = f"v{a.type.count}f32" if isinstance(a.type, ir.VectorType) else "f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(a.type, [a.type] * 3),
                                        f"llvm.fma.{name}")
    return builder.call(fn, [a, b, c])


def _affine_value32(builder, args):
    """(x - c) * a + s in float32 lanes: t = x - c32 (exact when x is within a factor of two of
    c32, Sterbenz), then one fused multiply-add with the rounding of c folded into the constant,
    s + (c32 - c) * a: a few float32 ulps of y even at |c| >> |x - c| (where x * a + s folded
    into one constant loses |c * a| * 2**-24). Half the vector work of the float64 value: no
    conversions, one rounding less precise."""
    c, a, s = args[2:5]
    c32 = builder.fptrunc(c, _F32)
    s_adj = builder.fadd(s, builder.fmul(builder.fsub(builder.fpext(c32, _F64), c), a))
    consts = [builder.fptrunc(v, _F32) for v in (a, s_adj)]

    def value(xs, i, lanes):
        cv, av, sv = (c32, *consts)
        if lanes:
            cv, av, sv = (_splat(builder, v, ir.VectorType(_F32, lanes)) for v in (cv, av, sv))
        return _fma(builder, builder.fsub(xs[0], cv), av, sv)

    return value


def _norm_value(builder, args):
    """((x - mu) * rstd) * w + b with (x, y, w, b, mu, rstd, ...) = args."""

    def value(v, i, lanes):
        x, w, b = v
        mu, rstd = _scalars(builder, args[4:6], lanes)
        return builder.fadd(builder.fmul(builder.fmul(builder.fsub(x, mu), rstd), w), b)

    return value


def _norm_value32(builder, args):
    """((x - mu) * rstd) * w + b in float32 lanes (x, w, b float32): t = (x - mu32) - (mu -
    mu32), then t * rstd and one fused multiply-add with w, b (see _affine_value32; the rounding
    of mu is subtracted, not folded, as w varies along the row)."""
    mu, rstd = args[4:6]
    mu32 = builder.fptrunc(mu, _F32)
    consts = (mu32, builder.fptrunc(builder.fsub(mu, builder.fpext(mu32, _F64)), _F32),
              builder.fptrunc(rstd, _F32))

    def value(v, i, lanes):
        x, w, b = v
        m, d, r = consts
        if lanes:
            m, d, r = (_splat(builder, c, ir.VectorType(_F32, lanes)) for c in consts)
        return _fma(builder, builder.fmul(builder.fsub(builder.fsub(x, m), d), r), w, b)

    return value


@intrinsic
def vaffine(typingctx, x, y, c, a, s, stream):
    """y[i] = (float64(x[i]) - c) * a + s for contiguous 1-D x, y of one length (float32 lanes
    for float32 x and y, see _affine_value32)."""

    def codegen(context, builder, sig, args):
        _row_map(context, builder, [(sig.args[0], args[0])], sig.args[1], args[1], args[5],
                 _affine_value(builder, args), value32=_affine_value32(builder, args))
        return context.get_dummy_value()

    f64 = types.float64
    return types.none(x, y, f64, f64, f64, types.boolean), codegen


@intrinsic
def vnorm(typingctx, x, y, w, b, mu, rstd, stream):
    """y[i] = ((float64(x[i]) - mu) * rstd) * w[i] + b[i], all contiguous (float32 lanes when x,
    y, w and b are float32, see _norm_value32)."""

    def codegen(context, builder, sig, args):
        ins = [(sig.args[k], args[k]) for k in (0, 2, 3)]
        _row_map(context, builder, ins, sig.args[1], args[1], args[6], _norm_value(builder, args),
                 value32=_norm_value32(builder, args))
        return context.get_dummy_value()

    return types.none(x, y, w, b, types.float64, types.float64, types.boolean), codegen


@intrinsic
def vaffine_each(typingctx, x, y, c, a, s, stream):
    """y[i] = (float64(x[i]) - c[i]) * a[i] + s[i]: vaffine with a parameter per element (rows
    at least as long as x, all contiguous; ``stream``: non-temporal stores, the caller fences).
    When x, y, c, a, s are all float32: fma(x - c, a, s) in float32 lanes, the callers folding
    c's rounding into s as _affine_value32 does."""

    def codegen(context, builder, sig, args):
        def value(v, i, lanes):
            x, c, a, s = v
            return builder.fadd(builder.fmul(builder.fsub(x, c), a), s)

        def value32(v, i, lanes):
            x, c, a, s = v
            return _fma(builder, builder.fsub(x, c), a, s)

        ins = [(sig.args[k], args[k]) for k in (0, 2, 3, 4)]
        _row_map(context, builder, ins, sig.args[1], args[1], args[5], value, value32=value32)
        return context.get_dummy_value()

    return types.none(x, y, c, a, s, types.boolean), codegen


@intrinsic
def vgrad_each(typingctx, dy, x, dx, a, k2, mu, k3, stream):
    """dx[i] = a[i] * float64(dy[i]) - k2[i] * (float64(x[i]) - mu[i]) - k3[i]: vgrad with a
    parameter per element (float64 rows at least as long as dy, all contiguous; ``stream`` as in
    vaffine_each; the same float64 operations as vgrad, so the same result bit for bit)."""

    def codegen(context, builder, sig, args):
        def value(v, i, lanes):
            dy, x, a, k2, mu, k3 = v
            t = builder.fsub(builder.fmul(a, dy), builder.fmul(k2, builder.fsub(x, mu)))
            return builder.fsub(t, k3)

        ins = [(sig.args[k], args[k]) for k in (0, 1, 3, 4, 5, 6)]
        _row_map(context, builder, ins, sig.args[2], args[2], args[7], value)
        return context.get_dummy_value()

    return types.none(dy, x, dx, a, k2, mu, k3, types.boolean), codegen


@intrinsic
def vgrad(typingctx, dy, x, dx, a, k2, mu, k3, stream):
    """dx[i] = a * float64(dy[i]) - k2 * (float64(x[i]) - mu) - k3; all contiguous."""

    def codegen(context, builder, sig, args):
        def value(v, i, lanes):
            dy, x = v
            a, k2, mu, k3 = _scalars(builder, args[3:7], lanes)
            t = builder.fsub(builder.fmul(a, dy), builder.fmul(k2, builder.fsub(x, mu)))
            return builder.fsub(t, k3)

        ins = [(sig.args[0], args[0]), (sig.args[1], args[1])]
        _row_map(context, builder, ins, sig.args[2], args[2], args[7], value)
        return context.get_dummy_value()

    f64 = types.float64
    return types.none(dy, x, dx, f64, f64, f64, f64, types.boolean), codegen


def _gradw_value(builder, args):
    """rstd * (w * dy - a2 * (x - mu) - a3) with (dy, x, w, dx, rstd, a2, mu, a3, ...) = args."""

    def value(v, i, lanes):
        dy, x, w = v
        rstd, a2, mu, a3 = _scalars(builder, args[4:8], lanes)
        t = builder.fsub(builder.fmul(w, dy), builder.fmul(a2, builder.fsub(x, mu)))
        return builder.fmul(rstd, builder.fsub(t, a3))

    return value


class _BlockedSums:
    """Two sums for an ``also`` of _row_map: vector terms into float64 lanes, or for float32
    (``blocked``) into float32 lanes over blocks of FLUSH vectors, each block widened into the
    float64 lanes (``begin``/``end`` around each block); scalar terms (the map's head and tail)
    into float64 scalars."""

    def __init__(self, builder, blocked):
        b = self.builder = builder
        self.blocked = blocked
        self.vd, self.ev = ir.VectorType(_F64, W), ir.VectorType(_F32 if blocked else _F64, W)
        self.vec = [cgutils.alloca_once_value(b, ir.Constant(self.vd, [0.0] * W)) for _ in "12"]
        self.blk = [cgutils.alloca_once(b, self.ev) for _ in "12"] if blocked else self.vec
        self.one = [cgutils.alloca_once_value(b, ir.Constant(_F64, 0.0)) for _ in "12"]

    def begin(self):
        for acc in self.blk:
            self.builder.store(ir.Constant(self.ev, [0.0] * W), acc)

    def end(self):
        b = self.builder
        for src, dst in zip(self.blk, self.vec, strict=True):
            b.store(b.fadd(b.load(dst), b.fpext(b.load(src), self.vd)), dst)

    def add(self, t, u, lanes):
        b = self.builder
        acc = self.blk if lanes else self.one
        b.store(b.fadd(b.load(acc[0]), t), acc[0])
        b.store(b.fadd(b.load(acc[1]), u), acc[1])

    def totals(self):
        b = self.builder
        return [b.fadd(_hsum(b, b.load(v)), b.load(o)) for v, o in zip(self.vec, self.one, strict=True)]


class _NextRowSums(_BlockedSums):
    """``also`` for _row_map: (sum(v - k), sum((v - k)**2)) of another row ``v`` of the same
    length. Reading the next row while writing this one keeps both memory streams busy: two
    separate passes leave the write stream idle while the statistics are read, and the other way
    round (measured: GroupNorm forward 27% faster).

    The vector part sums like ``_simd``: float32 input in float32 lanes over blocks of FLUSH
    vectors (about the shift rounded to float32), each block widened into float64 lanes, the
    sums moved back onto the float64 shift at the end; float64 input in float64 lanes. The map's
    head and tail elements go to scalar float64 sums."""

    def __init__(self, context, builder, v_ty, v, k, n):
        super().__init__(builder, v_ty.dtype == types.float32)
        b = builder
        self.n, self.k = n, k
        self.arr = context.make_array(v_ty)(context, builder, v)
        self.elt = context.get_data_type(v_ty.dtype)
        self.align = v_ty.dtype.bitwidth // 8
        self.k_lane = b.fptrunc(k, _F32) if self.blocked else k
        self.k_used = b.fpext(self.k_lane, _F64) if self.blocked else k
        self.kv = _splat(b, self.k_lane, self.ev)

    def __call__(self, i, lanes):
        b = self.builder
        p = b.gep(self.arr.data, [i], inbounds=True)
        if lanes:
            v = b.load(b.bitcast(p, ir.VectorType(self.elt, lanes).as_pointer()), align=self.align)
            t = b.fsub(_convert(b, v, self.ev), self.kv)
        else:
            t = b.fsub(_convert(b, b.load(p), _F64), self.k_used)
        self.add(t, b.fmul(t, t), lanes)

    def result(self, context, sig):
        b = self.builder
        s1, s2 = self.totals()
        if self.blocked:  # x - k = (x - k_used) + d
            d = b.fsub(self.k_used, self.k)
            cnt = b.sitofp(self.n, _F64)
            s2m = b.fadd(b.fadd(s2, b.fmul(b.fmul(d, ir.Constant(_F64, 2.0)), s1)), b.fmul(cnt, b.fmul(d, d)))
            s1, s2 = shift_moved(b, d, b.fadd(s1, b.fmul(cnt, d)), s1), shift_moved(b, d, s2m, s2)
        return context.make_tuple(b, sig.return_type, [s1, s2])


class _NextRowWSums(_BlockedSums):
    """``also`` for _row_map: (sum(w * dy), sum(w * dy * (x - mu))) of another row (dy, x, w),
    read in the same loop as the map (see _NextRowSums; float32 rows sum in float32 lanes over
    blocks of FLUSH vectors about mu rounded to float32, moved back onto mu at the end)."""

    def __init__(self, context, builder, tys, vals, mu):
        super().__init__(builder, all(t.dtype == types.float32 for t in tys))
        b = builder
        self.arrs = [(context.make_array(t)(context, builder, v), context.get_data_type(t.dtype),
                      t.dtype.bitwidth // 8) for t, v in zip(tys, vals, strict=True)]
        self.mu = mu
        self.mu_lane = b.fptrunc(mu, _F32) if self.blocked else mu
        self.mu_used = b.fpext(self.mu_lane, _F64) if self.blocked else mu
        self.muv = _splat(b, self.mu_lane, self.ev)

    def __call__(self, i, lanes):
        b = self.builder
        vals = []
        for arr, elt, align in self.arrs:
            p = b.gep(arr.data, [i], inbounds=True)
            if lanes:
                v = b.load(b.bitcast(p, ir.VectorType(elt, lanes).as_pointer()), align=align)
                vals.append(_convert(b, v, self.ev))
            else:
                vals.append(_convert(b, b.load(p), _F64))
        dy, x, w = vals
        mu = self.muv if lanes else self.mu_used
        t = b.fmul(w, dy)
        self.add(t, b.fmul(t, b.fsub(x, mu)), lanes)

    def result(self, context, sig):
        b = self.builder
        s1, s2 = self.totals()
        if self.blocked:  # x - mu = (x - mu_used) + d
            d = b.fsub(self.mu_used, self.mu)
            s2 = shift_moved(b, d, b.fadd(s2, b.fmul(d, s1)), s2)
        return context.make_tuple(b, sig.return_type, [s1, s2])


def _gradw_value32(builder, args):
    """_gradw_value in float32 lanes: with d = mu - mu32, a2 * (x - mu) + a3 = a2 * (x - mu32) +
    (a3 - a2 * d), the constant computed in float64; then one fused multiply-add, and rstd
    times the difference (w * dy and that sum are rounded alike, so terms that cancel exactly in
    float64 cancel here too)."""
    rstd, a2, mu, a3 = args[4:8]
    mu32 = builder.fptrunc(mu, _F32)
    c = builder.fsub(a3, builder.fmul(a2, builder.fsub(mu, builder.fpext(mu32, _F64))))
    consts = (builder.fptrunc(rstd, _F32), builder.fptrunc(a2, _F32), mu32, builder.fptrunc(c, _F32))

    def value(v, i, lanes):
        dy, x, w = v
        r, k, m, cc = consts
        if lanes:
            r, k, m, cc = (_splat(builder, q, ir.VectorType(_F32, lanes)) for q in consts)
        q = _fma(builder, k, builder.fsub(x, m), cc)
        return builder.fmul(r, builder.fsub(builder.fmul(w, dy), q))

    return value


@intrinsic
def vgradw_sums(typingctx, dy, x, w, dx, rstd, a2, mu, a3, stream, dy2, x2, w2, mu2):
    """dx[i] = rstd * (w[i] * dy[i] - a2 * (x[i] - mu) - a3), also returning (sum(w2 * dy2),
    sum(w2 * dy2 * (x2 - mu2))) of the next row, read in the same loop (all contiguous, of one
    length; unchecked)."""

    def codegen(context, builder, sig, args):
        sums = _NextRowWSums(context, builder, sig.args[9:12], args[9:12], args[12])
        ins = [(sig.args[k], args[k]) for k in (0, 1, 2)]
        _row_map(context, builder, ins, sig.args[3], args[3], args[8], _gradw_value(builder, args),
                 also=sums, value32=_gradw_value32(builder, args))
        return sums.result(context, sig)

    f64 = types.float64
    return types.UniTuple(f64, 2)(dy, x, w, dx, f64, f64, f64, f64, types.boolean, dy2, x2, w2,
                                  f64), codegen


def _length(context, builder, sig, args):
    """Length of the intrinsic's first (1-D) array argument."""
    return builder.extract_value(context.make_array(sig.args[0])(context, builder, args[0]).shape, 0)


@intrinsic
def vaffine_sums(typingctx, x, y, c, a, s, stream, nxt, k):
    """vaffine(x, y, c, a, s, stream) that also returns (sum(nxt - k), sum((nxt - k)**2)) of a
    row ``nxt`` at least as long as x (contiguous; unchecked)."""

    def codegen(context, builder, sig, args):
        n = _length(context, builder, sig, args)
        sums = _NextRowSums(context, builder, sig.args[6], args[6], args[7], n)
        _row_map(context, builder, [(sig.args[0], args[0])], sig.args[1], args[1], args[5],
                 _affine_value(builder, args), also=sums, value32=_affine_value32(builder, args))
        return sums.result(context, sig)

    f64 = types.float64
    return types.UniTuple(f64, 2)(x, y, f64, f64, f64, types.boolean, nxt, f64), codegen


@intrinsic
def vnorm_sums(typingctx, x, y, w, b, mu, rstd, stream, nxt, k):
    """vnorm(x, y, w, b, mu, rstd, stream) that also returns the next row's shifted sums (see
    vaffine_sums)."""

    def codegen(context, builder, sig, args):
        n = _length(context, builder, sig, args)
        sums = _NextRowSums(context, builder, sig.args[7], args[7], args[8], n)
        ins = [(sig.args[j], args[j]) for j in (0, 2, 3)]
        _row_map(context, builder, ins, sig.args[1], args[1], args[6], _norm_value(builder, args),
                 also=sums, value32=_norm_value32(builder, args))
        return sums.result(context, sig)

    f64 = types.float64
    return types.UniTuple(f64, 2)(x, y, w, b, f64, f64, types.boolean, nxt, f64), codegen


@intrinsic
def store_fence(typingctx):
    """A full memory fence: orders this thread's non-temporal stores before what follows."""

    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen
