"""Explicit-SIMD float64 reductions for contiguous 1-D views and for 2-D views with contiguous
rows (LLVM vector IR via ``@intrinsic``).

Why: with ``fastmath`` off LLVM must keep a floating-point sum in program order, so its loop
vectorizer never vectorizes a reduction, and numba runs without the SLP vectorizer
(NUMBA_SLP_VECTORIZE=0), so hand-unrolled accumulators stay scalar too. A scalar float64 sum with
a float32->float64 conversion runs at ~0.6 element/cycle: slower than memory. These intrinsics
spell out the order themselves: ``VL`` independent lanes (``VL`` interleaved partial sums,
``acc[j] += x[i + j]``), a fixed-order tree sum of the lanes, then the scalar tail. The
order is fixed by the IR, not by the machine, so results are deterministic and identical on
every CPU (LLVM splits a <16 x double> into whatever registers the target has).

Three reductions (``t`` is float64, ``k`` a float64 shift, ``w`` a float64 vector):

* mode 0: ``(sum(a - k), sum((a - k)**2))``
* mode 1: ``(sum(b), sum(b * (a - k)))``              (a = x, b = dy)
* mode 2: ``(sum(w * b), sum(w * b * (a - k)))``

A 2-D ``a``/``b`` (modes 0 and 1) sums over all its rows, the lanes carrying on from one row to
the next, so short rows pay one tree sum in all instead of one each. Its rows must be contiguous
(unit inner stride, any row stride): the intrinsic reads them as such; callers check.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

VL = 16
_F64 = ir.DoubleType()


def _hsum(builder, v):
    """Fixed-order tree sum of the lanes: add the upper half onto the lower half until one lane
    is left (log2(VL) dependent vector adds instead of VL dependent scalar adds)."""
    i32 = ir.IntType(32)
    width = VL
    while width > 1:
        half = width // 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, half), list(range(half))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, half), list(range(half, width))))
        v = builder.fadd(lo, hi)
        width = half
    return builder.extract_element(v, ir.Constant(i32, 0))


def _codegen(mode):
    def codegen(context, builder, sig, args):
        a_ty, b_ty, w_ty, _ = sig.args
        arr_a = context.make_array(a_ty)(context, builder, args[0])
        arr_b = context.make_array(b_ty)(context, builder, args[1])
        arr_w = context.make_array(w_ty)(context, builder, args[2])
        k = args[3]
        rows_view = a_ty.ndim == 2
        n = builder.extract_value(arr_a.shape, a_ty.ndim - 1)
        vd = ir.VectorType(_F64, VL)

        def row_ptr(arr, aty, r):
            """Pointer to element 0 of row ``r`` (the data pointer itself for a 1-D view)."""
            if aty.ndim == 1:
                return arr.data
            i8p = ir.IntType(8).as_pointer()
            off = builder.mul(r, builder.extract_value(arr.strides, 0))
            return builder.bitcast(builder.gep(builder.bitcast(arr.data, i8p), [off]), arr.data.type)

        def load_vec(ptr0, aty, idx):
            elt = context.get_data_type(aty.dtype)
            vty = ir.VectorType(elt, VL)
            ptr = builder.gep(ptr0, [idx], inbounds=True)
            vptr = builder.bitcast(ptr, vty.as_pointer())
            v = builder.load(vptr, align=aty.dtype.bitwidth // 8, typ=vty)
            return v if elt == _F64 else builder.fpext(v, vd)

        def load_one(ptr0, aty, idx):
            elt = context.get_data_type(aty.dtype)
            v = builder.load(builder.gep(ptr0, [idx], inbounds=True), typ=elt)
            return v if elt == _F64 else builder.fpext(v, _F64)

        kvec = ir.Constant(vd, ir.Undefined)
        for j in range(VL):
            kvec = builder.insert_element(kvec, k, ir.Constant(ir.IntType(32), j))
        zero_v = ir.Constant(vd, [0.0] * VL)
        acc1 = cgutils.alloca_once_value(builder, zero_v)
        acc2 = cgutils.alloca_once_value(builder, zero_v)
        nvec = builder.sdiv(n, ir.Constant(n.type, VL))
        start = builder.mul(nvec, ir.Constant(n.type, VL))

        def step(loader, ptrs, zero, idx, a1, a2):
            pa, pb, pw = ptrs
            x = loader(pa, a_ty, idx)
            if mode == 0:
                t = builder.fsub(x, zero)
                u = builder.fmul(t, t)
            else:
                t = loader(pb, b_ty, idx)
                if mode == 2:
                    t = builder.fmul(loader(pw, w_ty, idx), t)
                u = builder.fmul(t, builder.fsub(x, zero))
            builder.store(builder.fadd(builder.load(a1), t), a1)
            builder.store(builder.fadd(builder.load(a2), u), a2)

        def vector_part(ptrs):
            with cgutils.for_range(builder, nvec) as loop:
                step(load_vec, ptrs, kvec, builder.mul(loop.index, ir.Constant(n.type, VL)), acc1, acc2)

        def tail(ptrs, s1, s2):
            with cgutils.for_range_slice(builder, start, n, ir.Constant(n.type, 1)) as (i, _):
                step(load_one, ptrs, k, i, s1, s2)

        if not rows_view:
            ptrs = (arr_a.data, arr_b.data, arr_w.data)
            vector_part(ptrs)
            s1 = cgutils.alloca_once_value(builder, _hsum(builder, builder.load(acc1)))
            s2 = cgutils.alloca_once_value(builder, _hsum(builder, builder.load(acc2)))
            tail(ptrs, s1, s2)
            return context.make_tuple(builder, sig.return_type, [builder.load(s1), builder.load(s2)])
        # rows view: the lanes carry on from row to row (one tree sum in all, not one per row);
        # the row tails go to their own scalar sums, added at the end (a fixed order as well)
        t1 = cgutils.alloca_once_value(builder, ir.Constant(_F64, 0.0))
        t2 = cgutils.alloca_once_value(builder, ir.Constant(_F64, 0.0))
        with cgutils.for_range(builder, builder.extract_value(arr_a.shape, 0)) as rows:
            r = rows.index
            ptrs = (row_ptr(arr_a, a_ty, r), row_ptr(arr_b, b_ty, r), arr_w.data)
            vector_part(ptrs)
            tail(ptrs, t1, t2)
        s1 = builder.fadd(_hsum(builder, builder.load(acc1)), builder.load(t1))
        s2 = builder.fadd(_hsum(builder, builder.load(acc2)), builder.load(t2))
        return context.make_tuple(builder, sig.return_type, [s1, s2])

    return codegen


def _make(mode):
    def red(typingctx, a, b, w, k):
        return types.UniTuple(types.float64, 2)(a, b, w, types.float64), _codegen(mode)

    red.__name__ = f"vred{mode}"
    return intrinsic(red)


#: vred0(x, x, x, k), vred1(x, dy, x, mu), vred2(x, dy, w, mu): see the module docstring.
vred0 = _make(0)
vred1 = _make(1)
vred2 = _make(2)
