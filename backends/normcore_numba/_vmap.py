"""Explicit-SIMD element-wise map for contiguous 1-D views: ``y = float64(x) * a + s``, rounded
once to y's dtype (LLVM vector IR via ``@intrinsic``).

Why: LLVM's own vectorized loop for a short row (BatchNorm rows of 49..784 elements) is a
64-element unrolled body, runtime alias checks between x and y, and a scalar remainder loop; a
7x7 row never reaches the vector body. Here every row runs 16-element vectors and at most 15
scalar elements, with no alias checks (x and y are distinct or identical arrays, never
partially overlapping: the backend allocates y). Results equal the scalar loop's bit for bit
(the same float64 multiply and add per element, no contraction).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._simd import _splat

W = 16
_F64 = ir.DoubleType()


def _convert(builder, v, to):
    """fpext/fptrunc between float types (scalars or vectors of the same length)."""
    if v.type == to:
        return v
    wide = (to.element if isinstance(to, ir.VectorType) else to) == _F64
    return builder.fpext(v, to) if wide else builder.fptrunc(v, to)


@intrinsic
def vaffine(typingctx, x, y, a, s):
    """y[i] = float64(x[i]) * a + s for contiguous 1-D x, y of one length."""

    def codegen(context, builder, sig, args):
        x_ty, y_ty = sig.args[:2]
        ax = context.make_array(x_ty)(context, builder, args[0])
        ay = context.make_array(y_ty)(context, builder, args[1])
        a, s = args[2], args[3]
        n = builder.extract_value(ax.shape, 0)
        const = lambda v: ir.Constant(n.type, v)  # noqa: E731
        xe, ye = context.get_data_type(x_ty.dtype), context.get_data_type(y_ty.dtype)
        vd = ir.VectorType(_F64, W)
        av, sv = _splat(builder, a, vd), _splat(builder, s, vd)

        def at(arr, elt, i, lanes):
            p = builder.gep(arr.data, [i], inbounds=True)
            return builder.bitcast(p, ir.VectorType(elt, lanes).as_pointer()) if lanes else p

        nvec = builder.sdiv(n, const(W))
        with cgutils.for_range(builder, nvec) as loop:
            i = builder.mul(loop.index, const(W))
            v = _convert(builder, builder.load(at(ax, xe, i, W), align=x_ty.dtype.bitwidth // 8), vd)
            r = builder.fadd(builder.fmul(v, av), sv)
            builder.store(_convert(builder, r, ir.VectorType(ye, W)), at(ay, ye, i, W),
                          align=y_ty.dtype.bitwidth // 8)
        with cgutils.for_range_slice(builder, builder.mul(nvec, const(W)), n, const(1)) as (i, _):
            v = _convert(builder, builder.load(at(ax, xe, i, 0)), _F64)
            builder.store(_convert(builder, builder.fadd(builder.fmul(v, a), s), ye), at(ay, ye, i, 0))
        return context.get_dummy_value()

    return types.none(x, y, types.float64, types.float64), codegen
