"""Explicit-SIMD element-wise maps for contiguous 1-D rows, computed in float64 and rounded once
to y's dtype (LLVM vector IR via ``@intrinsic``):

* ``vaffine(x, y, a, s, stream)``:                 ``y = x * a + s``          (a, s scalars)
* ``vnorm(x, y, w, b, mu, rstd, stream)``:         ``y = ((x - mu) * rstd) * w + b``
* ``vgrad(dy, x, dx, a, k2, mu, k3, stream)``:     ``dx = a * dy - k2 * (x - mu) - k3``
* ``vgradw(dy, x, w, dx, rstd, k2, mu, k3, ...)``: ``dx = (rstd * w) * dy - k2 * (x - mu) - k3``

(w, b are float64 rows; the other parameters float64 scalars.)

Why not LLVM's own loop: for a short row (BatchNorm rows of 49..784 elements) it is a 64-element
unrolled body, runtime alias checks between x and y, and a scalar remainder loop, so a 7x7 row
never reaches the vector body. Here every row runs 16-element vectors and at most 15 scalar
elements, with no alias checks (the backend allocates y: x and y never partially overlap).
Results equal the scalar loop's bit for bit (the same float64 operations per element, no
contraction).

``stream=True`` writes the vector body with non-temporal stores (``!nontemporal``; MOVNT on
x86), after a scalar head that brings y to a 64-byte boundary. A normal store first reads the
line it writes (read-for-ownership): for an output too big for the last-level cache that is a
third memory stream, and skipping it made a 25 MB BatchNorm normalize 13% faster. For outputs
that fit in cache streaming is slower (the next reader misses), so the backend asks for it only
past the cache size. A kernel that streams calls ``store_fence()`` once at the end of each
block, so the stores are visible to other threads when the parallel region joins.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._simd import _hsum, _splat

W = 16
ALIGN = 64
_F64 = ir.DoubleType()


def _convert(builder, v, to):
    """fpext/fptrunc between float types (scalars or vectors of the same length)."""
    if v.type == to:
        return v
    wide = (to.element if isinstance(to, ir.VectorType) else to) == _F64
    return builder.fpext(v, to) if wide else builder.fptrunc(v, to)


def _row_map(context, builder, ins, y_ty, y, stream, value, also=None):
    """Emit ``y[i] = value([u[i] as float64 for u in ins], i, lanes)`` over contiguous rows of one
    length, 16 lanes at a time; ``ins`` is a list of (numba type, value) and ``value`` gets float64
    scalars (lanes 0) or <16 x double> vectors and returns the same shape. ``also(i, lanes)``,
    when given, runs in the same loop steps (the next row's sums, see ``_next_row_sums``)."""
    arrs = [(context.make_array(t)(context, builder, v), t) for t, v in ins]
    ay = context.make_array(y_ty)(context, builder, y)
    n = builder.extract_value(arrs[0][0].shape, 0)
    const = lambda v: ir.Constant(n.type, v)  # noqa: E731
    ye, ysize = context.get_data_type(y_ty.dtype), y_ty.dtype.bitwidth // 8
    nt_md = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])

    def at(arr, elt, i, lanes):
        p = builder.gep(arr.data, [i], inbounds=True)
        return builder.bitcast(p, ir.VectorType(elt, lanes).as_pointer()) if lanes else p

    def load(i, lanes):
        out = []
        for arr, t in arrs:
            elt = context.get_data_type(t.dtype)
            v = builder.load(at(arr, elt, i, lanes), align=t.dtype.bitwidth // 8)
            out.append(_convert(builder, v, ir.VectorType(_F64, lanes) if lanes else _F64))
        return out

    def scalar(i):
        builder.store(_convert(builder, value(load(i, 0), i, 0), ye), at(ay, ye, i, 0))
        if also is not None:
            also(i, 0)

    def vectors(first, count, nontemporal):
        with cgutils.for_range(builder, count) as loop:
            i = builder.add(first, builder.mul(loop.index, const(W)))
            r = _convert(builder, value(load(i, W), i, W), ir.VectorType(ye, W))
            st = builder.store(r, at(ay, ye, i, W), align=ALIGN if nontemporal else ysize)
            if nontemporal:
                st.set_metadata("nontemporal", nt_md)
            if also is not None:
                also(i, W)

    # head: elements before y's first 64-byte boundary (streaming only; 0 otherwise)
    mis = builder.and_(builder.ptrtoint(ay.data, n.type), const(ALIGN - 1))
    to_line = builder.udiv(builder.and_(builder.sub(const(ALIGN), mis), const(ALIGN - 1)), const(ysize))
    head = builder.select(stream, to_line, const(0))
    head = builder.select(builder.icmp_signed(">", head, n), n, head)
    with cgutils.for_range(builder, head) as loop:
        scalar(loop.index)
    nvec = builder.sdiv(builder.sub(n, head), const(W))
    with builder.if_else(stream) as (streamed, cached):
        with streamed:
            vectors(head, nvec, True)
        with cached:
            vectors(head, nvec, False)
    tail = builder.add(head, builder.mul(nvec, const(W)))
    with cgutils.for_range_slice(builder, tail, n, const(1)) as (i, _):
        scalar(i)


def _scalars(builder, values, lanes):
    """The float64 scalars as they are (lanes 0) or splatted to <lanes x double>."""
    if not lanes:
        return values
    return [_splat(builder, v, ir.VectorType(_F64, lanes)) for v in values]


def _affine_value(builder, args):
    """x * a + s with (x, y, a, s, ...) = args."""

    def value(xs, i, lanes):
        a, s = _scalars(builder, args[2:4], lanes)
        return builder.fadd(builder.fmul(xs[0], a), s)

    return value


def _norm_value(builder, args):
    """((x - mu) * rstd) * w + b with (x, y, w, b, mu, rstd, ...) = args."""

    def value(v, i, lanes):
        x, w, b = v
        mu, rstd = _scalars(builder, args[4:6], lanes)
        return builder.fadd(builder.fmul(builder.fmul(builder.fsub(x, mu), rstd), w), b)

    return value


@intrinsic
def vaffine(typingctx, x, y, a, s, stream):
    """y[i] = float64(x[i]) * a + s for contiguous 1-D x, y of one length."""

    def codegen(context, builder, sig, args):
        _row_map(context, builder, [(sig.args[0], args[0])], sig.args[1], args[1], args[4],
                 _affine_value(builder, args))
        return context.get_dummy_value()

    return types.none(x, y, types.float64, types.float64, types.boolean), codegen


@intrinsic
def vnorm(typingctx, x, y, w, b, mu, rstd, stream):
    """y[i] = ((float64(x[i]) - mu) * rstd) * w[i] + b[i]; w and b float64, all contiguous."""

    def codegen(context, builder, sig, args):
        ins = [(sig.args[k], args[k]) for k in (0, 2, 3)]
        _row_map(context, builder, ins, sig.args[1], args[1], args[6], _norm_value(builder, args))
        return context.get_dummy_value()

    return types.none(x, y, w, b, types.float64, types.float64, types.boolean), codegen


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


@intrinsic
def vgradw(typingctx, dy, x, w, dx, rstd, k2, mu, k3, stream):
    """dx[i] = (rstd * w[i]) * float64(dy[i]) - k2 * (float64(x[i]) - mu) - k3; w float64."""

    def codegen(context, builder, sig, args):
        def value(v, i, lanes):
            dy, x, w = v
            rstd, k2, mu, k3 = _scalars(builder, args[4:8], lanes)
            a = builder.fmul(rstd, w)
            t = builder.fsub(builder.fmul(a, dy), builder.fmul(k2, builder.fsub(x, mu)))
            return builder.fsub(t, k3)

        ins = [(sig.args[k], args[k]) for k in (0, 1, 2)]
        _row_map(context, builder, ins, sig.args[3], args[3], args[8], value)
        return context.get_dummy_value()

    f64 = types.float64
    return types.none(dy, x, w, dx, f64, f64, f64, f64, types.boolean), codegen


class _NextRowSums:
    """``also`` for _row_map: (sum(v - k), sum((v - k)**2)) of another row ``v`` of the same
    length, in 16 float64 lanes plus scalar sums for the map's head and tail elements. Reading
    the next row while writing this one keeps both memory streams busy: two separate passes
    leave the write stream idle while the statistics are read, and the other way round."""

    def __init__(self, context, builder, v_ty, v, k):
        self.builder, self.k = builder, k
        self.arr = context.make_array(v_ty)(context, builder, v)
        self.elt = context.get_data_type(v_ty.dtype)
        self.align = v_ty.dtype.bitwidth // 8
        vd = ir.VectorType(_F64, W)
        self.kv = _splat(builder, k, vd)
        self.vec = [cgutils.alloca_once_value(builder, ir.Constant(vd, [0.0] * W)) for _ in "12"]
        self.one = [cgutils.alloca_once_value(builder, ir.Constant(_F64, 0.0)) for _ in "12"]

    def __call__(self, i, lanes):
        b = self.builder
        p = b.gep(self.arr.data, [i], inbounds=True)
        if lanes:
            p = b.bitcast(p, ir.VectorType(self.elt, lanes).as_pointer())
        v = _convert(b, b.load(p, align=self.align), ir.VectorType(_F64, lanes) if lanes else _F64)
        t = b.fsub(v, self.kv if lanes else self.k)
        acc = self.vec if lanes else self.one
        b.store(b.fadd(b.load(acc[0]), t), acc[0])
        b.store(b.fadd(b.load(acc[1]), b.fmul(t, t)), acc[1])

    def result(self, context, sig):
        b = self.builder
        s1, s2 = (b.fadd(_hsum(b, b.load(v)), b.load(o)) for v, o in zip(self.vec, self.one, strict=True))
        return context.make_tuple(b, sig.return_type, [s1, s2])


@intrinsic
def vaffine_sums(typingctx, x, y, a, s, stream, nxt, k):
    """vaffine(x, y, a, s, stream) that also returns (sum(nxt - k), sum((nxt - k)**2)) of a row
    ``nxt`` at least as long as x (contiguous; unchecked)."""

    def codegen(context, builder, sig, args):
        sums = _NextRowSums(context, builder, sig.args[5], args[5], args[6])
        _row_map(context, builder, [(sig.args[0], args[0])], sig.args[1], args[1], args[4],
                 _affine_value(builder, args), also=sums)
        return sums.result(context, sig)

    f64 = types.float64
    return types.UniTuple(f64, 2)(x, y, f64, f64, types.boolean, nxt, f64), codegen


@intrinsic
def vnorm_sums(typingctx, x, y, w, b, mu, rstd, stream, nxt, k):
    """vnorm(x, y, w, b, mu, rstd, stream) that also returns the next row's shifted sums (see
    vaffine_sums)."""

    def codegen(context, builder, sig, args):
        sums = _NextRowSums(context, builder, sig.args[7], args[7], args[8])
        ins = [(sig.args[j], args[j]) for j in (0, 2, 3)]
        _row_map(context, builder, ins, sig.args[1], args[1], args[6], _norm_value(builder, args),
                 also=sums)
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
