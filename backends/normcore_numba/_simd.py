"""Explicit-SIMD float64 reductions for contiguous 1-D views (LLVM vector IR via ``@intrinsic``).

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
        n = builder.extract_value(arr_a.shape, 0)
        vd = ir.VectorType(_F64, VL)

        def load_vec(arr, aty, idx):
            elt = context.get_data_type(aty.dtype)
            vty = ir.VectorType(elt, VL)
            ptr = builder.gep(arr.data, [idx], inbounds=True)
            vptr = builder.bitcast(ptr, vty.as_pointer())
            v = builder.load(vptr, align=aty.dtype.bitwidth // 8, typ=vty)
            return v if elt == _F64 else builder.fpext(v, vd)

        def load_one(arr, aty, idx):
            elt = context.get_data_type(aty.dtype)
            ptr = builder.gep(arr.data, [idx], inbounds=True)
            v = builder.load(ptr, typ=elt)
            return v if elt == _F64 else builder.fpext(v, _F64)

        kvec = ir.Constant(vd, ir.Undefined)
        for j in range(VL):
            kvec = builder.insert_element(kvec, k, ir.Constant(ir.IntType(32), j))
        zero_v = ir.Constant(vd, [0.0] * VL)
        acc1 = cgutils.alloca_once_value(builder, zero_v)
        acc2 = cgutils.alloca_once_value(builder, zero_v)
        nvec = builder.sdiv(n, ir.Constant(n.type, VL))

        def step(loader, zero, idx, a1, a2):
            x = loader(arr_a, a_ty, idx)
            if mode == 0:
                t = builder.fsub(x, zero)
                u = builder.fmul(t, t)
            else:
                t = loader(arr_b, b_ty, idx)
                if mode == 2:
                    t = builder.fmul(loader(arr_w, w_ty, idx), t)
                u = builder.fmul(t, builder.fsub(x, zero))
            builder.store(builder.fadd(builder.load(a1), t), a1)
            builder.store(builder.fadd(builder.load(a2), u), a2)

        with cgutils.for_range(builder, nvec) as loop:
            idx = builder.mul(loop.index, ir.Constant(n.type, VL))
            step(load_vec, kvec, idx, acc1, acc2)

        s1 = cgutils.alloca_once_value(builder, _hsum(builder, builder.load(acc1)))
        s2 = cgutils.alloca_once_value(builder, _hsum(builder, builder.load(acc2)))
        start = builder.mul(nvec, ir.Constant(n.type, VL))
        with cgutils.for_range_slice(builder, start, n, ir.Constant(n.type, 1)) as (i, _):
            step(load_one, k, i, s1, s2)
        return context.make_tuple(builder, sig.return_type, [builder.load(s1), builder.load(s2)])

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
