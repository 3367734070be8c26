"""Explicit-SIMD reductions for contiguous 1-D views, and per-channel sums over ranges of the
contiguous rows of (N, C, L) views (LLVM vector IR via ``@intrinsic``), accumulated in float64.

Why: with ``fastmath`` off LLVM must keep a floating-point sum in program order, so its loop
vectorizer never vectorizes a reduction, and numba runs without the SLP vectorizer
(NUMBA_SLP_VECTORIZE=0), so hand-unrolled accumulators stay scalar too. A scalar float64 sum with
a float32->float64 conversion runs at ~0.6 element/cycle: slower than memory. These intrinsics
spell out the order themselves: independent lanes (interleaved partial sums, ``acc[j] += x[i +
j]``), a fixed-order tree sum of the lanes, then the scalar tail. The order is fixed by the IR,
not by the machine, so results are deterministic and identical on every CPU (LLVM splits a wide
vector into whatever registers the target has).

Two lane schemes, chosen at compile time on the input dtype:

* float64 input (and mode 2): ``VL`` = 16 float64 lanes.
* float32 input (modes 0 and 1): ``NL`` = 32 float32 lanes that each add ``FLUSH`` consecutive
  terms, then are widened and added into 32 float64 lanes (a blocked sum: a float32 partial
  holds at most ``FLUSH`` terms, so its rounding error is at most ~FLUSH * 2**-24 of the block's
  magnitude, about 2e-6 for FLUSH = 32, and everything beyond a block is summed in float64).
  Widening every element costs two conversions and doubles the vector work (measured:
  LayerNorm-row statistics 30% faster this way); widening every FLUSH terms rather than every 4
  made row statistics of cached rows another 30% faster (GroupNorm rows of 8192 floats, 2
  threads: 210 -> 150 us for 4M elements). A block is a loop over ``UNROLL`` vectors unrolled in
  the IR: longer bodies only cost compile time. One half-width (16-lane) vector follows the full
  ones, so rows of 16..31 elements still run vectorized. The float32 terms use the shift rounded
  to float32 (exact for the usual shift, a sample of the data) and the sums are moved back onto
  the float64 shift at the end.

``vacc0``/``vacc1`` are modes 0 and 1 that, instead of returning two sums, fold their lanes to
``FOLD`` lanes and add them onto two caller-owned float64 vectors (the row tails onto lane 0),
with no shift correction: for many short rows adding into one total (BatchNorm's per-channel
sums), where a tree sum per row would cost as much as the row.

Three reductions (``t`` is float64, ``k`` a float64 shift, ``w`` a float64 vector):

* mode 0: ``(sum(a - k), sum((a - k)**2))``
* mode 1: ``(sum(b), sum(b * (a - k)))``              (a = x, b = dy)
* mode 2: ``(sum(w * b), sum(w * b * (a - k)))``

``vrows0``/``vrows1`` are modes 0 and 1 over a range of (n, c) rows of (N, C, L) views, adding
each row's lanes onto its channel's (see ROW_ADDS below): one call per thread block, so short
rows pay neither a numba-level slice nor a fold per row. Rows must be contiguous (unit inner
stride, any other strides): the intrinsic reads them as such; callers check. Measured on
BatchNorm statistics of (256, 64, 8, 8) float32, 2 threads: 65-72 us per-channel strided rows
(the kernels before), 51 us this way, against 27 us for a flat read of the same 4 MB.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, errors, types
from numba.extending import intrinsic

VL = 16
NL = 32
FLUSH = 32
UNROLL = 4
FOLD = 8
_F64 = ir.DoubleType()
_F32 = ir.FloatType()
_I32 = ir.IntType(32)


def shift_moved(builder, d, moved, plain):
    """``moved`` (a sum carried from the float32 shift onto the float64 one by ``d``), or ``plain``
    where d is 0: the carry then adds exactly nothing, and skipping it keeps an infinite sum from
    becoming NaN (0 * inf). RMSNorm's shift is 0, and torch gives an infinite input's row zeros and
    one NaN, not a row of NaN."""
    return builder.select(builder.fcmp_ordered("==", d, ir.Constant(_F64, 0.0)), plain, moved)


def _hsum(builder, v):
    """Fixed-order tree sum of the lanes: add the upper half onto the lower half until one lane
    is left (log2(width) dependent vector adds instead of width dependent scalar adds)."""
    return builder.extract_element(_fold(builder, v, 1), ir.Constant(_I32, 0))


def narrow_lanes(a_ty, b_ty) -> bool:
    """Whether modes 0 and 1 sum ``a``/``b`` of these numba types in float32 lanes."""
    return a_ty.dtype == b_ty.dtype == types.float32


def _splat(builder, value, vty):
    v = ir.Constant(vty, ir.Undefined)
    for j in range(vty.count):
        v = builder.insert_element(v, value, ir.Constant(_I32, j))
    return v


def _fold(builder, v, width):
    """Fixed-order fold of a vector's lanes down to ``width`` lanes (upper half onto lower)."""
    while v.type.count > width:
        half = v.type.count // 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, half), list(range(half))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, half), list(range(half, 2 * half))))
        v = builder.fadd(lo, hi)
    return v


def _codegen(mode, into=False):
    def codegen(context, builder, sig, args):
        a_ty, b_ty, w_ty = sig.args[:3]
        arr_a = context.make_array(a_ty)(context, builder, args[0])
        arr_b = context.make_array(b_ty)(context, builder, args[1])
        arr_w = context.make_array(w_ty)(context, builder, args[2])
        k = args[3]
        narrow = mode != 2 and narrow_lanes(a_ty, b_ty)
        width = NL if narrow else VL
        lane = _F32 if narrow else _F64  # the lanes' type inside a block
        n = builder.extract_value(arr_a.shape, 0)
        const = lambda v: ir.Constant(n.type, v)  # noqa: E731

        def loader(lanes, to):
            """Load ``lanes`` elements (a scalar for 0) at an index, converted to type ``to``."""
            def load(ptr0, aty, idx):
                elt = context.get_data_type(aty.dtype)
                ptr = builder.gep(ptr0, [idx], inbounds=True)
                if lanes:
                    vty = ir.VectorType(elt, lanes)
                    vptr = builder.bitcast(ptr, vty.as_pointer())
                    v = builder.load(vptr, align=aty.dtype.bitwidth // 8, typ=vty)
                    return v if elt == to else builder.fpext(v, ir.VectorType(to, lanes))
                v = builder.load(ptr, typ=elt)
                return v if elt == to else builder.fpext(v, to)
            return load

        # the shift the terms use: k itself, or k rounded to float32 for float32 lanes
        k_lane = builder.fptrunc(k, _F32) if narrow else k
        k_used = builder.fpext(k_lane, _F64) if narrow else k

        def step(load, ptrs, shift, idx, a1, a2, widen=None):
            """Add one index's terms (a vector or a scalar) onto the sums at a1, a2."""
            pa, pb, pw = ptrs
            x = load(pa, a_ty, idx)
            if mode == 0:
                t = builder.fsub(x, shift)
                u = builder.fmul(t, t)
            else:
                t = load(pb, b_ty, idx)
                if mode == 2:
                    t = builder.fmul(load(pw, w_ty, idx), t)
                u = builder.fmul(t, builder.fsub(x, shift))
            for acc, v in ((a1, t), (a2, u)):
                builder.store(builder.fadd(builder.load(acc), widen(v) if widen else v), acc)

        vd = ir.VectorType(_F64, width)
        ev = ir.VectorType(lane, width)
        kvec = _splat(builder, k_lane, ev)
        acc1 = cgutils.alloca_once_value(builder, ir.Constant(vd, [0.0] * width))
        acc2 = cgutils.alloca_once_value(builder, ir.Constant(vd, [0.0] * width))
        blk1 = cgutils.alloca_once(builder, ev)
        blk2 = cgutils.alloca_once(builder, ev)
        t1 = cgutils.alloca_once_value(builder, ir.Constant(_F64, 0.0))
        t2 = cgutils.alloca_once_value(builder, ir.Constant(_F64, 0.0))
        nvec = builder.sdiv(n, const(width))
        start = builder.mul(nvec, const(width))
        if narrow:  # one half-width float32 vector after the full ones, into its own float64 lanes
            half = width // 2
            hd = ir.VectorType(_F64, half)
            hk = _splat(builder, k_lane, ir.VectorType(_F32, half))
            half1 = cgutils.alloca_once_value(builder, ir.Constant(hd, [0.0] * half))
            half2 = cgutils.alloca_once_value(builder, ir.Constant(hd, [0.0] * half))
            has_half = builder.icmp_signed(">=", builder.sub(n, start), const(half))
            start = builder.select(has_half, builder.add(start, const(half)), start)

        def block(ptrs, v0, count):
            """``count`` vectors from vector ``v0`` on: summed in float32 lanes, then flushed
            into the float64 lanes (or straight into the float64 lanes for float64 input)."""
            a1, a2 = (blk1, blk2) if narrow else (acc1, acc2)
            if narrow:
                builder.store(ir.Constant(ev, [0.0] * width), blk1)
                builder.store(ir.Constant(ev, [0.0] * width), blk2)
            load = loader(width, lane)
            if isinstance(count, int):  # a full block: a loop over UNROLL vectors unrolled in the IR
                with cgutils.for_range(builder, const(count // UNROLL)) as loop:
                    u0 = builder.add(v0, builder.mul(loop.index, const(UNROLL)))
                    for j in range(UNROLL):
                        step(load, ptrs, kvec, builder.mul(builder.add(u0, const(j)), const(width)), a1, a2)
            else:
                with cgutils.for_range(builder, count) as loop:
                    step(load, ptrs, kvec, builder.mul(builder.add(v0, loop.index), const(width)), a1, a2)
            if narrow:
                for src, dst in ((blk1, acc1), (blk2, acc2)):
                    builder.store(builder.fadd(builder.load(dst), builder.fpext(builder.load(src), vd)), dst)

        ptrs = (arr_a.data, arr_b.data, arr_w.data)
        if narrow:
            nfull = builder.sdiv(nvec, const(FLUSH))
            with cgutils.for_range(builder, nfull) as blocks:
                block(ptrs, builder.mul(blocks.index, const(FLUSH)), FLUSH)
            done = builder.mul(nfull, const(FLUSH))
            rest = builder.sub(nvec, done)
            with builder.if_then(builder.icmp_signed(">", rest, const(0))):
                block(ptrs, done, rest)
            with builder.if_then(has_half):
                step(loader(half, _F32), ptrs, hk, builder.mul(nvec, const(width)), half1, half2,
                     widen=lambda v: builder.fpext(v, hd))
        else:
            block(ptrs, const(0), nvec)
        # the row's tail: scalar float64 sums of their own
        with cgutils.for_range_slice(builder, start, n, const(1)) as (i, _):
            step(loader(0, _F64), ptrs, k_used, i, t1, t2)

        def lanes(acc, hacc):
            v = builder.load(acc)
            if narrow:
                v = builder.fadd(_fold(builder, v, half), builder.load(hacc))
            return v

        if into:
            # fold the lanes to FOLD and add them onto the caller's FOLD-lane float64 sums (the
            # tails onto lane 0); the caller owns the shift (it must be float32-exact here)
            i0 = ir.Constant(_I32, 0)
            for acc, hacc, tl, pos in ((acc1, half1 if narrow else None, t1, 4),
                                       (acc2, half2 if narrow else None, t2, 5)):
                v = _fold(builder, lanes(acc, hacc), FOLD)
                lane0 = builder.fadd(builder.extract_element(v, i0), builder.load(tl))
                v = builder.insert_element(v, lane0, i0)
                arr = context.make_array(sig.args[pos])(context, builder, args[pos])
                vp = builder.bitcast(arr.data, ir.VectorType(_F64, FOLD).as_pointer())
                builder.store(builder.fadd(builder.load(vp, align=8), v), vp, align=8)
            return context.get_dummy_value()
        s1 = builder.fadd(_hsum(builder, lanes(acc1, half1 if narrow else None)), builder.load(t1))
        s2 = builder.fadd(_hsum(builder, lanes(acc2, half2 if narrow else None)), builder.load(t2))
        if narrow:
            # move the sums from the float32 shift k_used back onto k: x - k = (x - k_used) + d
            d = builder.fsub(k_used, k)
            if mode == 0:
                cnt = builder.sitofp(n, _F64)
                two_d = builder.fmul(d, ir.Constant(_F64, 2.0))
                s2m = builder.fadd(builder.fadd(s2, builder.fmul(two_d, s1)),
                                   builder.fmul(cnt, builder.fmul(d, d)))
                s1m = builder.fadd(s1, builder.fmul(cnt, d))
                s1, s2 = shift_moved(builder, d, s1m, s1), shift_moved(builder, d, s2m, s2)
            else:
                s2 = shift_moved(builder, d, builder.fadd(s2, builder.fmul(d, s1)), s2)
        return context.make_tuple(builder, sig.return_type, [s1, s2])

    return codegen


def _make(mode):
    def red(typingctx, a, b, w, k):
        return types.UniTuple(types.float64, 2)(a, b, w, types.float64), _codegen(mode)

    red.__name__ = f"vred{mode}"
    return intrinsic(red)


def _make_into(mode):
    def red(typingctx, a, b, w, k, acc1, acc2):
        return types.none(a, b, w, types.float64, acc1, acc2), _codegen(mode, into=True)

    red.__name__ = f"vacc{mode}"
    return intrinsic(red)


#: vacc0(x, x, x, k, acc1, acc2), vacc1(x, dy, x, mu, acc1, acc2): acc1, acc2 contiguous float64
#: vectors of FOLD elements (unchecked; the kernels pass rows of a (blocks, C, FOLD) array).
vacc0 = _make_into(0)
vacc1 = _make_into(1)

#: vred0(x, x, x, k), vred1(x, dy, x, mu), vred2(x, dy, w, mu): see the module docstring.
vred0 = _make(0)
vred1 = _make(1)
vred2 = _make(2)


# ---------------------------------------------------------------- per-channel sums of rows
#: Lanes per channel of the row-range reductions (vrows0/vrows1): a row's lanes are added onto
#: its channel's lanes, with no fold and no tree sum per row (on rows of 49..512 elements those
#: cost as much as the row).
ROW_LANES = 16
#: Sequential adds a float32 lane may take before it is widened into float64 (error <= this many
#: times 2**-24 of the magnitudes summed): a row's two partials take ceil(vectors / 2) adds, the
#: channel's float32 lanes one per row, widened onto the float64 lanes every F rows of each
#: channel with F = ROW_ADDS - ceil(vectors / 2) (at least 1). Rows of up to 2 * ROW_ADDS
#: vectors (512 float32) only: longer rows go to the per-row kernels.
ROW_ADDS = 16
#: Rows of exactly these many vectors (64 float32 elements: 8x8 feature maps) walk with the
#: per-vector loop unrolled (see _rows_codegen). Shorter rows with many n go by strips instead
#: (_channel's *_strips), and each unrolled walk costs compile time: five of them (0..4 vectors)
#: made the first BatchNorm forward's compile 0.3 s longer than none.
UNROLLED_VECTORS = (4,)


def _rows_codegen(mode):
    """Codegen of vrows{mode}(a3, b3, k, r0, r1, p1, p2, q1, q2): for rows r0 <= r < r1 of
    (N, C, L) views in (n, c) order, whose rows are contiguous, sum the lanes of mode ``mode``'s
    two sums over the rows of each channel c, shifted by k[c], into p1[c], p2[c] ((C, ROW_LANES)
    float64, overwritten). q1, q2: (C, ROW_LANES) scratch of the lanes' type (float32 for
    float32 input)."""

    def codegen(context, builder, sig, args):
        a_ty, b_ty, k_ty, _, _, p_ty, _, q_ty, _ = sig.args
        arr_a = context.make_array(a_ty)(context, builder, args[0])
        arr_b = context.make_array(b_ty)(context, builder, args[1])
        arr_k = context.make_array(k_ty)(context, builder, args[2])
        r0, r1 = args[3], args[4]
        p1, p2 = (context.make_array(p_ty)(context, builder, a) for a in args[5:7])
        q1, q2 = (context.make_array(q_ty)(context, builder, a) for a in args[7:9])
        narrow = narrow_lanes(a_ty, b_ty)
        lane = _F32 if narrow else _F64
        vt, vd = ir.VectorType(lane, ROW_LANES), ir.VectorType(_F64, ROW_LANES)
        c_, l_ = (builder.extract_value(arr_a.shape, i) for i in (1, 2))
        const = lambda v: ir.Constant(l_.type, v)  # noqa: E731
        zero_v = ir.Constant(vt, [0.0] * ROW_LANES)
        i8p = ir.IntType(8).as_pointer()

        def n_base(arr, n):  # byte pointer to row (n, 0)
            s0 = builder.extract_value(arr.strides, 0)
            return builder.gep(builder.bitcast(arr.data, i8p), [builder.mul(n, s0)])

        def row_of(arr, base, c):
            s1 = builder.extract_value(arr.strides, 1)
            return builder.bitcast(builder.gep(base, [builder.mul(c, s1)]), arr.data.type)

        def lanes_at(arr, c, ty):
            p = builder.gep(arr.data, [builder.mul(c, const(ROW_LANES))], inbounds=True)
            return builder.bitcast(p, ty.as_pointer())

        def load(ptr, aty, idx, mask):
            elt = context.get_data_type(aty.dtype)
            et = ir.VectorType(elt, ROW_LANES)
            p = builder.bitcast(builder.gep(ptr, [idx], inbounds=True), et.as_pointer())
            align = aty.dtype.bitwidth // 8
            if mask is None:
                v = builder.load(p, align=align)
            else:  # lanes past the row are not read (no fault at the array's end)
                v = _masked_load(builder, p, et, mask, align)
            return v if elt == lane else builder.fpext(v, vt)

        def terms(pa, pb, idx, kv, mask=None):
            x = load(pa, a_ty, idx, mask)
            if mode == 0:
                t = builder.fsub(x, kv)
                return t, builder.fmul(t, t)
            t = load(pb, b_ty, idx, mask)
            return t, builder.fmul(t, builder.fsub(x, kv))

        def add_into(ptr, v, align=None):
            builder.store(builder.fadd(builder.load(ptr, align=align), v), ptr, align=align)

        def flush():  # the channels' lanes onto their float64 lanes, and zeroed
            with cgutils.for_range(builder, c_) as ch:
                for q, p in ((q1, p1), (q2, p2)):
                    qp = lanes_at(q, ch.index, vt)
                    add_into(lanes_at(p, ch.index, vd), _convert(builder, builder.load(qp, align=4), vd), 8)
                    builder.store(zero_v, qp, align=4)

        zero_d = ir.Constant(vd, [0.0] * ROW_LANES)
        neg_zero = ir.Constant(vt, [-0.0] * ROW_LANES)
        with cgutils.for_range(builder, c_) as ch:  # this block's partials and scratch, zeroed
            for q in (q1, q2):
                builder.store(zero_v, lanes_at(q, ch.index, vt), align=4)
            for p in (p1, p2):
                builder.store(zero_d, lanes_at(p, ch.index, vd), align=8)
        nvec = builder.sdiv(l_, const(ROW_LANES))
        npair = builder.sdiv(nvec, const(2))
        odd = builder.icmp_signed("<", builder.mul(npair, const(2)), nvec)
        tail0 = builder.mul(nvec, const(ROW_LANES))
        has_tail = builder.icmp_signed("<", tail0, l_)
        iv = ir.VectorType(_I32, ROW_LANES)
        rem = _splat(builder, builder.trunc(builder.sub(l_, tail0), _I32), iv)
        mask = builder.icmp_signed("<", ir.Constant(iv, list(range(ROW_LANES))), rem)
        vectors = builder.add(nvec, builder.zext(has_tail, l_.type))
        per = builder.sub(const(ROW_ADDS), builder.sdiv(builder.add(vectors, const(1)), const(2)))
        per = builder.select(builder.icmp_signed("<", per, const(1)), const(1), per)
        # The walk: n from the block's first row's to its last row's, c over the rows of each n
        # in the block (nested loops: a single loop over rows spent as much on stepping (n, c)
        # and counting rows to the next flush as on a 64-element row's arithmetic). Each n adds
        # at most one row per channel, so flushing every ``per`` n keeps the bound of ROW_ADDS.
        n_first = builder.sdiv(r0, c_)
        c_first = builder.sub(r0, builder.mul(n_first, c_))
        n_last = builder.sdiv(builder.sub(r1, const(1)), c_)
        c_end = builder.sub(r1, builder.mul(n_last, c_))
        since = cgutils.alloca_once_value(builder, const(0))  # n since the last flush
        part = [cgutils.alloca_once(builder, vt) for _ in range(4)]  # (sum, other) x 2 partials

        def row_loop(nv):
            """The walk over the rows; ``nv`` full vectors per row when a Python int (the loop
            over them unrolled), any number (``nvec``) when None. Vector j goes to partial j % 2
            and the tail to partial 1 either way, so every version sums in the same order."""
            builder.store(const(0), since)
            with cgutils.for_range_slice(builder, n_first, builder.add(n_last, const(1)), const(1)) as (n, _):
                cs = builder.select(builder.icmp_signed("==", n, n_first), c_first, const(0))
                ce = builder.select(builder.icmp_signed("==", n, n_last), c_end, c_)
                ba, bb = n_base(arr_a, n), n_base(arr_b, n)
                with cgutils.for_range_slice(builder, cs, ce, const(1)) as (c, _):
                    pa, pb = row_of(arr_a, ba, c), row_of(arr_b, bb, c)
                    kd = builder.load(builder.gep(arr_k.data, [c], inbounds=True))
                    kl = builder.fptrunc(kd, _F32) if narrow else kd
                    kv = _splat(builder, kl, vt)
                    for acc in part:  # -0.0: adding the first term folds away (x + -0.0 == x)
                        builder.store(neg_zero, acc)

                    def vec(v_idx, j):
                        t, u = terms(pa, pb, builder.mul(v_idx, const(ROW_LANES)), kv)
                        add_into(part[j], t)
                        add_into(part[2 + j], u)

                    if nv is None:
                        with cgutils.for_range(builder, npair) as pairs:
                            v0 = builder.mul(pairs.index, const(2))
                            vec(v0, 0)
                            vec(builder.add(v0, const(1)), 1)
                        with builder.if_then(odd):
                            vec(builder.sub(nvec, const(1)), 0)
                    else:  # rows of exactly nv vectors: no tail
                        for j in range(nv):
                            vec(const(j), j % 2)
                    if nv is None:
                        with builder.if_then(has_tail):  # the last L % 16 elements: one masked vector
                            t, u = terms(pa, pb, tail0, kv, mask)
                            add_into(part[1], builder.select(mask, t, zero_v))
                            add_into(part[3], builder.select(mask, u, zero_v))
                    for q, i in ((q1, 0), (q2, 2)):
                        row = builder.fadd(builder.load(part[i]), builder.load(part[i + 1]))
                        add_into(lanes_at(q, c, vt), row, 4)
                done = builder.add(builder.load(since), const(1))
                builder.store(done, since)
                with builder.if_then(builder.icmp_signed("==", done, per)):
                    flush()
                    builder.store(const(0), since)

        # Rows of UNROLLED_VECTORS vectors and no tail get a walk of their own (a switch on L,
        # once per call): on rows of 64 elements the generic loop's own bookkeeping costs 7%.
        end = builder.append_basic_block("rows.end")
        generic = builder.append_basic_block("rows.generic")
        switch = builder.switch(l_, generic)
        for nv in UNROLLED_VECTORS:
            block = builder.append_basic_block(f"rows.{nv}")
            switch.add_case(ir.Constant(l_.type, nv * ROW_LANES), block)
            builder.position_at_end(block)
            row_loop(nv)
            builder.branch(end)
        builder.position_at_end(generic)
        row_loop(None)
        builder.branch(end)
        builder.position_at_end(end)
        flush()
        return context.get_dummy_value()

    return codegen


def _convert(builder, v, to):
    """fpext/fptrunc between float types (scalars or vectors of the same length)."""
    if v.type == to:
        return v
    wide = (to.element if isinstance(to, ir.VectorType) else to) == _F64
    return builder.fpext(v, to) if wide else builder.fptrunc(v, to)


def _make_rows(mode):
    def red(typingctx, a, b, k, r0, r1, p1, p2, q1, q2):
        lane = types.float32 if narrow_lanes(a, b) else types.float64
        if q1.dtype != lane or q2.dtype != lane or p1.dtype != types.float64:
            raise errors.TypingError(f"vrows{mode}: scratch lanes must be {lane} and partials "
                                     f"float64 for inputs {a.dtype}, {b.dtype}")
        sig = types.none(a, b, k, types.intp, types.intp, p1, p2, q1, q2)
        return sig, _rows_codegen(mode)

    red.__name__ = f"vrows{mode}"
    return intrinsic(red)


#: vrows0(x3, x3, k, r0, r1, p1, p2, q1, q2): p1[c] = lanes of sum(x - k[c]), p2[c] = lanes of
#: sum((x - k[c])**2) over rows r0..r1 of x3; k[c] must be exact in x's dtype (a sample of x).
#: vrows1(x3, dy3, mu, r0, r1, p1, p2, q1, q2): p1[c] = lanes of sum(dy), p2[c] = lanes of
#: sum(dy * (x - mu')), mu' = lane_shift(dy, x, mu[c]) (the caller moves the sums onto mu).
vrows0 = _make_rows(0)
vrows1 = _make_rows(1)


# ---------------------------------------------------------------- per-position sums over n
#: Positions per strip of the per-position reductions (vstrip0): 8 vectors of float32 lanes, or
#: one vector where a slab has fewer positions than that.
STRIP_WIDE = 8 * ROW_LANES
STRIP_NARROW = ROW_LANES


def _masked(builder, name, ret, arg_types, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, arg_types), name)
    return builder.call(fn, args)


def _vname(vt):
    return f"v{vt.count}{'f32' if vt.element == _F32 else 'f64'}"


def _masked_load(builder, ptr, vt, mask, align):
    """vt-wide load of ptr where mask is set (0 elsewhere; lanes off the mask are not read)."""
    name = _vname(vt)
    return _masked(builder, f"llvm.masked.load.{name}.p0{name}", vt,
                   [vt.as_pointer(), _I32, mask.type, vt],
                   [builder.bitcast(ptr, vt.as_pointer()), ir.Constant(_I32, align), mask,
                    ir.Constant(vt, [0.0] * vt.count)])


def _masked_store(builder, value, ptr, mask, align):
    vt = value.type
    name = _vname(vt)
    _masked(builder, f"llvm.masked.store.{name}.p0{name}", ir.VoidType(),
            [vt, vt.as_pointer(), _I32, mask.type],
            [value, builder.bitcast(ptr, vt.as_pointer()), ir.Constant(_I32, align), mask])


def _strip_codegen(mode):
    """Codegen of vstrip{mode}(a3, b3, kp, n0, n1, j0, o1, o2): for the positions j0 <= j < j0 +
    width of the (C * L)-element slabs a3[n], b3[n] (contiguous), n0 <= n < n1, mode 0's or mode
    1's two sums (module docstring; a = x, b = dy) with the shift kp[j], float64, into o1[j],
    o2[j] (overwritten; positions past the slab untouched). The width is STRIP_WIDE, or
    STRIP_NARROW for slabs shorter than STRIP_WIDE. Lanes of x's type (float32 for float32
    input) take ROW_ADDS rows, then are added onto float64 lanes."""

    def codegen(context, builder, sig, args):
        a_ty, b_ty, k_ty, _, _, _, o_ty, _ = sig.args
        arr_a = context.make_array(a_ty)(context, builder, args[0])
        arr_b = context.make_array(b_ty)(context, builder, args[1])
        arr_k = context.make_array(k_ty)(context, builder, args[2])
        n0, n1, j0 = args[3], args[4], args[5]
        o1, o2 = (context.make_array(o_ty)(context, builder, a) for a in args[6:8])
        narrow = narrow_lanes(a_ty, b_ty)
        lane = _F32 if narrow else _F64
        vt, vd, iv = (ir.VectorType(t, ROW_LANES) for t in (lane, _F64, _I32))
        c_, l_ = (builder.extract_value(arr_a.shape, i) for i in (1, 2))
        const = lambda v: ir.Constant(l_.type, v)  # noqa: E731
        p_ = builder.mul(c_, l_)
        zero_v, zero_d = ir.Constant(vt, [0.0] * ROW_LANES), ir.Constant(vd, [0.0] * ROW_LANES)
        i8p = ir.IntType(8).as_pointer()
        left = builder.trunc(builder.sub(p_, j0), _I32)  # positions from j0 to the slab's end

        def load(arr, aty, row, v, mask):
            """Vector v of the strip in slab row ``row`` of arr, in the lanes' type."""
            elt = context.get_data_type(aty.dtype)
            et = ir.VectorType(elt, ROW_LANES)
            ptr = builder.gep(row, [builder.add(j0, const(v * ROW_LANES))], inbounds=True)
            align = aty.dtype.bitwidth // 8
            if mask is None:
                out = builder.load(builder.bitcast(ptr, et.as_pointer()), align=align)
            else:
                out = _masked_load(builder, ptr, et, mask, align)
            return _convert(builder, out, vt)

        def slab(arr, n):
            s0 = builder.extract_value(arr.strides, 0)
            return builder.bitcast(builder.gep(builder.bitcast(arr.data, i8p), [builder.mul(n, s0)]),
                                   arr.data.type)

        def strip(nv):
            masks = [builder.icmp_signed("<", ir.Constant(iv, [v * ROW_LANES + i for i in range(ROW_LANES)]),
                                         _splat(builder, left, iv)) for v in range(nv)]
            kv = [load(arr_k, k_ty, arr_k.data, v, masks[v]) for v in range(nv)]
            part = [cgutils.alloca_once_value(builder, zero_v) for _ in range(2 * nv)]
            wide = [cgutils.alloca_once_value(builder, zero_d) for _ in range(2 * nv)]
            for a in part:
                builder.store(zero_v, a)
            for a in wide:
                builder.store(zero_d, a)
            since = cgutils.alloca_once_value(builder, const(0))
            builder.store(const(0), since)

            def flush():
                for a, d in zip(part, wide, strict=True):
                    builder.store(builder.fadd(builder.load(d), _convert(builder, builder.load(a), vd)), d)
                    builder.store(zero_v, a)

            def rows(masked):
                with cgutils.for_range_slice(builder, n0, n1, const(1)) as (n, _):
                    ra = slab(arr_a, n)
                    rb = ra if mode == 0 else slab(arr_b, n)
                    for v in range(nv):
                        m = masks[v] if masked else None
                        xv = load(arr_a, a_ty, ra, v, m)
                        if mode == 0:
                            t = builder.fsub(xv, kv[v])
                            u = builder.fmul(t, t)
                        else:
                            t = load(arr_b, b_ty, rb, v, m)
                            u = builder.fmul(t, builder.fsub(xv, kv[v]))
                        builder.store(builder.fadd(builder.load(part[v]), t), part[v])
                        builder.store(builder.fadd(builder.load(part[nv + v]), u), part[nv + v])
                    done = builder.add(builder.load(since), const(1))
                    builder.store(done, since)
                    with builder.if_then(builder.icmp_signed("==", done, const(ROW_ADDS))):
                        flush()
                        builder.store(const(0), since)

            whole = builder.icmp_signed(">=", left, ir.Constant(_I32, nv * ROW_LANES))
            with builder.if_else(whole) as (then, other):
                with then:
                    rows(False)
                with other:  # the slab's last strip
                    rows(True)
            flush()
            for v in range(nv):
                for o, a in ((o1, wide[v]), (o2, wide[nv + v])):
                    ptr = builder.gep(o.data, [builder.add(j0, const(v * ROW_LANES))], inbounds=True)
                    _masked_store(builder, builder.load(a), ptr, masks[v], 8)

        with builder.if_else(builder.icmp_signed(">=", p_, const(STRIP_WIDE))) as (then, other):
            with then:
                strip(STRIP_WIDE // ROW_LANES)
            with other:
                strip(STRIP_NARROW // ROW_LANES)
        return context.get_dummy_value()

    return codegen


def _make_strip(mode):
    def red(typingctx, a, b, kp, n0, n1, j0, o1, o2):
        lane = types.float32 if narrow_lanes(a, b) else types.float64
        if kp.dtype != lane or o1.dtype != types.float64 or o2.dtype != types.float64:
            raise errors.TypingError(f"vstrip{mode}: kp must be {lane} and o1, o2 float64 for "
                                     f"inputs {a.dtype}, {b.dtype}")
        sig = types.none(a, b, kp, types.intp, types.intp, types.intp, o1, o2)
        return sig, _strip_codegen(mode)

    red.__name__ = f"vstrip{mode}"
    return intrinsic(red)


#: vstrip0(x3, x3, kp, n0, n1, j0, o1, o2): per position j of the strip from j0, o1[j] =
#: sum(x - kp[j]), o2[j] = sum((x - kp[j])**2) over slabs n0..n1; kp exact samples of x.
#: vstrip1(x3, dy3, kp, n0, n1, j0, o1, o2): o1[j] = sum(dy), o2[j] = sum(dy * (x - kp[j])).
#: The slabs must be contiguous (unit L stride, C stride L elements; any N stride): callers
#: check. kp: (C * L,) in the lanes' type, o1, o2: (C * L,) float64, all contiguous.
vstrip0 = _make_strip(0)
vstrip1 = _make_strip(1)
