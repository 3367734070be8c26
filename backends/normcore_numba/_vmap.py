"""Explicit-SIMD element-wise maps for contiguous 1-D rows, computed in float64 and rounded once
to y's dtype (LLVM vector IR via ``@intrinsic``):

* ``vaffine(x, y, a, s, stream)``:          ``y = x * a + s``                (a, s scalars)
* ``vnorm(x, y, w, b, mu, rstd, stream)``:  ``y = ((x - mu) * rstd) * w + b`` (w, b float64 rows)

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

from ._simd import _splat

W = 16
ALIGN = 64
_F64 = ir.DoubleType()


def _convert(builder, v, to):
    """fpext/fptrunc between float types (scalars or vectors of the same length)."""
    if v.type == to:
        return v
    wide = (to.element if isinstance(to, ir.VectorType) else to) == _F64
    return builder.fpext(v, to) if wide else builder.fptrunc(v, to)


def _row_map(context, builder, x_ty, y_ty, x, y, stream, value):
    """Emit ``y[i] = value(x_i as float64, i, lanes)`` over a contiguous row, 16 lanes at a time;
    ``value`` gets a float64 scalar (lanes 0) or <16 x double> and returns the same shape."""
    ax = context.make_array(x_ty)(context, builder, x)
    ay = context.make_array(y_ty)(context, builder, y)
    n = builder.extract_value(ax.shape, 0)
    const = lambda v: ir.Constant(n.type, v)  # noqa: E731
    xe, ye = context.get_data_type(x_ty.dtype), context.get_data_type(y_ty.dtype)
    xsize, ysize = x_ty.dtype.bitwidth // 8, y_ty.dtype.bitwidth // 8
    nt_md = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])

    def at(arr, elt, i, lanes):
        p = builder.gep(arr.data, [i], inbounds=True)
        return builder.bitcast(p, ir.VectorType(elt, lanes).as_pointer()) if lanes else p

    def scalar(i):
        v = _convert(builder, builder.load(at(ax, xe, i, 0)), _F64)
        builder.store(_convert(builder, value(v, i, 0), ye), at(ay, ye, i, 0))

    def vectors(first, count, nontemporal):
        with cgutils.for_range(builder, count) as loop:
            i = builder.add(first, builder.mul(loop.index, const(W)))
            v = _convert(builder, builder.load(at(ax, xe, i, W), align=xsize), ir.VectorType(_F64, W))
            r = _convert(builder, value(v, i, W), ir.VectorType(ye, W))
            st = builder.store(r, at(ay, ye, i, W), align=ALIGN if nontemporal else ysize)
            if nontemporal:
                st.set_metadata("nontemporal", nt_md)

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


@intrinsic
def vaffine(typingctx, x, y, a, s, stream):
    """y[i] = float64(x[i]) * a + s for contiguous 1-D x, y of one length."""

    def codegen(context, builder, sig, args):
        a, s = args[2], args[3]
        vd = ir.VectorType(_F64, W)
        av, sv = _splat(builder, a, vd), _splat(builder, s, vd)

        def value(v, i, lanes):
            return builder.fadd(builder.fmul(v, av if lanes else a), sv if lanes else s)

        _row_map(context, builder, sig.args[0], sig.args[1], args[0], args[1], args[4], value)
        return context.get_dummy_value()

    return types.none(x, y, types.float64, types.float64, types.boolean), codegen


@intrinsic
def vnorm(typingctx, x, y, w, b, mu, rstd, stream):
    """y[i] = ((float64(x[i]) - mu) * rstd) * w[i] + b[i]; x, y, w, b contiguous 1-D, w and b
    float64."""

    def codegen(context, builder, sig, args):
        aw = context.make_array(sig.args[2])(context, builder, args[2])
        ab = context.make_array(sig.args[3])(context, builder, args[3])
        mu, rstd = args[4], args[5]
        vd = ir.VectorType(_F64, W)
        muv, rv = _splat(builder, mu, vd), _splat(builder, rstd, vd)

        def load(arr, i, lanes):
            p = builder.gep(arr.data, [i], inbounds=True)
            if lanes:
                return builder.load(builder.bitcast(p, vd.as_pointer()), align=8)
            return builder.load(p)

        def value(v, i, lanes):
            t = builder.fmul(builder.fsub(v, muv if lanes else mu), rv if lanes else rstd)
            return builder.fadd(builder.fmul(t, load(aw, i, lanes)), load(ab, i, lanes))

        _row_map(context, builder, sig.args[0], sig.args[1], args[0], args[1], args[6], value)
        return context.get_dummy_value()

    return types.none(x, y, w, b, types.float64, types.float64, types.boolean), codegen


@intrinsic
def store_fence(typingctx):
    """A full memory fence: orders this thread's non-temporal stores before what follows."""

    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen
