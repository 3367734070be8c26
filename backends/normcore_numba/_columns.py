"""Column sums down a tile of rows (LLVM vector IR via ``@intrinsic``): the weight and bias
gradients of the row-view backward (LayerNorm, RMSNorm), ``dbias[i] = sum_r dy[r, i]`` and
``dweight[i] = sum_r dy[r, i] * xhat[r, i]`` with ``xhat = (x - mean) * rstd``.

Why: added into float64 partials one row at a time, every element of the backward paid two
float64 vector loads, two stores and two conversions on top of the row's own passes: measured,
LayerNorm (8192, 1024) float32 backward took 2.8 ms, 1.85 ms without them (2 threads). ``vcols``
sums a tile of up to ``TILE`` rows per column in registers first, then adds the tile's sums onto
the float64 partials once, so the float64 traffic is paid once per TILE rows.

Lanes: float32 rows are summed in float32 lanes (at most TILE terms per float32 sum: an error of
~TILE * 2**-24 of the terms' magnitude; everything beyond a tile is summed in float64), with
``xhat = fma(x - mean32, rstd32, -e32)`` where mean32 is the mean rounded to float32 and
``e = (mean - mean32) * rstd`` carries its rounding, so a large mean loses nothing (as in
_vmap's float32 maps). Any other dtype runs in float64 lanes, ``xhat = (x - mean) * rstd``.
The order of the sums is fixed by the IR: results are deterministic.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._simd import _F32, _F64, _convert, _splat

#: Rows per tile (measured on LayerNorm (8192, 1024) backward: 4 and 16 rows were slower).
TILE = 8


def _intrinsic_fn(builder, name, ty, nargs):
    suffix = (f"v{ty.count}" if isinstance(ty, ir.VectorType) else "") + (
        "f32" if (ty.element if isinstance(ty, ir.VectorType) else ty) == _F32 else "f64")
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * nargs),
                                        f"llvm.{name}.{suffix}")
    return fn


def _codegen(context, builder, sig, args):
    dy_ty, x_ty, m_ty, v_ty, _, w_ty, b_ty = sig.args
    ady, ax, am, av = (context.make_array(t)(context, builder, a)
                       for t, a in zip(sig.args[:4], args[:4], strict=True))
    aw, ab = (context.make_array(t)(context, builder, a)
              for t, a in zip(sig.args[5:], args[5:], strict=True))
    eps = args[4]
    narrow = dy_ty.dtype == x_ty.dtype == types.float32
    lane = _F32 if narrow else _F64
    width = 32 if narrow else 16  # two 512-bit registers per sum either way
    rows = builder.extract_value(ady.shape, 0)
    d = builder.extract_value(ady.shape, 1)
    const = lambda v: ir.Constant(d.type, v)  # noqa: E731
    i8p = ir.IntType(8).as_pointer()

    def row_ptr(arr, ty, r):
        """Pointer to element 0 of row r (rows of a 2-D view, or element r of a 1-D one)."""
        s0 = builder.extract_value(arr.strides, 0)
        p = builder.gep(builder.bitcast(arr.data, i8p), [builder.mul(r, s0)])
        return builder.bitcast(p, context.get_data_type(ty.dtype).as_pointer())

    def load(ptr, ty, i, lanes, step=None):
        """``lanes`` contiguous elements from element i of a row (a vector), or for lanes 0 the
        element i at ``step`` bytes apart (a scalar), in the lanes' type."""
        elt = context.get_data_type(ty.dtype)
        if lanes:
            vt = ir.VectorType(elt, lanes)
            p = builder.bitcast(builder.gep(ptr, [i], inbounds=True), vt.as_pointer())
            return _convert(builder, builder.load(p, align=ty.dtype.bitwidth // 8),
                            ir.VectorType(lane, lanes))
        p = builder.gep(builder.bitcast(ptr, i8p), [builder.mul(i, step)])
        return _convert(builder, builder.load(builder.bitcast(p, elt.as_pointer())), lane)

    # per-row constants (mean, rstd, e) in the lanes' type, on the stack
    consts = [cgutils.alloca_once(builder, ir.ArrayType(lane, TILE)) for _ in range(3)]
    sqrt = _intrinsic_fn(builder, "sqrt", _F64, 1)
    with cgutils.for_range(builder, rows) as loop:
        r = loop.index
        mu = builder.load(row_ptr(am, m_ty, r))
        var = builder.load(row_ptr(av, v_ty, r))
        rstd = builder.fdiv(ir.Constant(_F64, 1.0), builder.call(sqrt, [builder.fadd(var, eps)]))
        if narrow:
            m32 = builder.fptrunc(mu, _F32)
            e = builder.fmul(builder.fsub(mu, builder.fpext(m32, _F64)), rstd)
            vals = (m32, builder.fptrunc(rstd, _F32), builder.fptrunc(e, _F32))
        else:
            vals = (mu, rstd, ir.Constant(_F64, 0.0))
        for arr, v in zip(consts, vals, strict=True):
            builder.store(v, builder.gep(arr, [ir.Constant(r.type, 0), r]))

    def const_of(k, r, lanes):
        v = builder.load(builder.gep(consts[k], [ir.Constant(r.type, 0), r]))
        return _splat(builder, v, ir.VectorType(lane, lanes)) if lanes else v

    def add_terms(dyv, xv, m, rr, e, acc_b, acc_w):
        """(acc_b + dy, acc_w + dy * xhat) of one row's elements (vectors or scalars)."""
        if narrow:
            fma = _intrinsic_fn(builder, "fma", dyv.type, 3)
            xhat = builder.call(fma, [builder.fsub(xv, m), rr, builder.fneg(e)])
            return builder.fadd(acc_b, dyv), builder.call(fma, [dyv, xhat, acc_w])
        xhat = builder.fmul(builder.fsub(xv, m), rr)
        return builder.fadd(acc_b, dyv), builder.fadd(acc_w, builder.fmul(dyv, xhat))

    def flush(i, lanes, acc_b, acc_w):
        """Add a column range's tile sums onto the float64 partials."""
        for arr, acc in ((ab, acc_b), (aw, acc_w)):
            p = builder.gep(arr.data, [i], inbounds=True)
            if lanes:
                p = builder.bitcast(p, ir.VectorType(_F64, lanes).as_pointer())
            wide = _convert(builder, acc, ir.VectorType(_F64, lanes) if lanes else _F64)
            builder.store(builder.fadd(builder.load(p, align=8), wide), p, align=8)

    steps = [builder.extract_value(a.strides, 1) for a in (ady, ax)]

    def columns(i, lanes):
        """One column range (``lanes`` columns from i; a scalar column for 0) over every row."""
        zero = ir.Constant(ir.VectorType(lane, lanes) if lanes else lane,
                           [0.0] * lanes if lanes else 0.0)
        sums = [cgutils.alloca_once_value(builder, zero) for _ in range(2)]
        with cgutils.for_range(builder, rows) as loop:
            r = loop.index
            b, w = add_terms(load(row_ptr(ady, dy_ty, r), dy_ty, i, lanes, steps[0]),
                             load(row_ptr(ax, x_ty, r), x_ty, i, lanes, steps[1]),
                             *(const_of(k, r, lanes) for k in range(3)),
                             builder.load(sums[0]), builder.load(sums[1]))
            builder.store(b, sums[0])
            builder.store(w, sums[1])
        flush(i, lanes, builder.load(sums[0]), builder.load(sums[1]))

    # vectors where both views have contiguous rows, then the rest column by column
    unit = builder.and_(*(builder.icmp_signed("==", st, const(t.dtype.bitwidth // 8))
                          for st, t in zip(steps, (dy_ty, x_ty), strict=True)))
    nvec = builder.select(unit, builder.sdiv(d, const(width)), const(0))
    with cgutils.for_range(builder, nvec) as loop:
        columns(builder.mul(loop.index, const(width)), width)
    with cgutils.for_range_slice(builder, builder.mul(nvec, const(width)), d, const(1)) as (i, _):
        columns(i, 0)
    return context.get_dummy_value()


@intrinsic
def vcols(typingctx, dy2, x2, mean, var, eps, pw, pb):
    """For the rows r of a tile (dy2, x2: (R, D) views, R <= TILE; mean, var: float64 (R,)
    views), add sum_r dy2[r, i] onto pb[i] and sum_r dy2[r, i] * (x2[r, i] - mean[r]) /
    sqrt(var[r] + eps) onto pw[i] (pw, pb: contiguous float64 (D,)). Rows with a stride go
    column by column. Unchecked: the caller guarantees the shapes and R <= TILE."""
    return types.none(dy2, x2, mean, var, types.float64, pw, pb), _codegen
