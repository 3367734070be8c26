"""Shared jit options and small reduction helpers used by every kernel module.

The reductions work on 1-D views and are resolved at compile time on the view's layout: a
contiguous ('C') view uses the explicit-SIMD intrinsics of ``_simd`` (float64 lanes, or short
float32 blocks flushed into float64 lanes for float32 input; fixed order); any other layout uses
a scalar loop with four independent float64 accumulators (fixed order too). Both are
deterministic; they are compiled into the parallel kernel that calls them. The helpers called
once per (possibly short) row are inlined (``inline="always"``): a call per 64-element row costs
as much as the row; the long-row ones are not (inlining them made LayerNorm slower).

Note for developers: numba's on-disk cache is keyed on each kernel's own source file; after
editing any module of compiled code run ``python -m normcore_numba._fingerprint`` (the test suite
fails until then) so that every cached kernel is recompiled (see ``_fingerprint``).
"""

from __future__ import annotations

import math

import numba
from llvmlite import ir
from numba import njit
from numba.core import cgutils, errors, types
from numba.core.cpu_options import ParallelOptions
from numba.extending import intrinsic, overload
from numba.np.arrayobj import populate_array

from ._simd import narrow_lanes, vacc0, vacc1, vred0, vred1, vred2
from ._vmap import vaffine, vaffine_sums, vgrad, vgradw_sums, vnorm, vnorm_sums

#: The fingerprint of the package's compiled code (see _fingerprint): in this file, so
#: that numba's disk cache drops these kernels whenever any of that code changes.
CODE_SHA256 = "6adc431478b936b911208132f5a59a11b8b1334d36670d322a76640b09a89b74"

#: Options of the one parallel kernel (``_blocks._run_blocks``; every other kernel is compiled
#: with HELPER and runs its blocks through it). error_model="numpy": division by zero gives
#: inf/nan like the reference instead of raising. fastmath stays off: results must match the
#: reference bit-for-bit in the rounding sense and sums must not be reassociated
#: nondeterministically.
#: parallel: explicit prange loops only. The kernels write no array expressions to fuse, and the
#: other parfor passes (array expressions, np.* calls, reductions) only cost compile time. Given as
#: a ParallelOptions object, not a dict: numba pops the keys out of a dict at every compile
#: (``ParallelOptions.__init__``), so one shared dict would be empty from the process's second
#: compile on, and every later kernel would get all the passes (each defaults to on).
KERNEL = {"parallel": ParallelOptions({"prange": True, "comprehension": False,
                                       "reduction": False, "inplace_binop": False,
                                       "setitem": False, "numpy": False, "stencil": False,
                                       "fusion": False}),
          "cache": True, "fastmath": False, "error_model": "numpy", "nogil": True}
HELPER = {"cache": True, "fastmath": False, "error_model": "numpy", "nogil": True}


# ---------------------------------------------------------------- allocation without overloads
# numba's np.empty, ndarray.astype and max(float, float) are overloads, each compiled as a
# function of its own (and np.empty once per dtype and rank) the first time a process uses it:
# 0.15-0.2 s of a cold-cache first layer call. These helpers emit the same code inline.


def _dtype_of(dtype: types.Type) -> types.Type:
    if isinstance(dtype, types.DType):  # x.dtype
        return dtype.dtype
    if isinstance(dtype, types.NumberClass):  # np.float64
        return dtype.instance_type
    raise errors.TypingError(f"empty: expected a dtype, got {dtype}")


@intrinsic
def empty(typingctx, shape, dtype):
    """np.empty(shape, dtype) (an int or a tuple of ints), C order, without the overload."""
    dims = list(shape) if isinstance(shape, types.BaseTuple) else [shape]
    if not all(isinstance(d, types.Integer) for d in dims):
        raise errors.TypingError(f"empty: shape must be ints, got {shape}")
    arr_ty = types.Array(_dtype_of(dtype), len(dims), "C")

    def codegen(context, builder, sig, args):
        if isinstance(shape, types.BaseTuple):
            sizes = [builder.extract_value(args[0], i) for i in range(len(dims))]
            kinds = list(shape)
        else:
            sizes, kinds = [args[0]], [shape]
        intp = context.get_value_type(types.intp)
        sizes = [context.cast(builder, v, t, types.intp) for v, t in zip(sizes, kinds, strict=True)]
        itemsize = ir.Constant(intp, context.get_abi_sizeof(context.get_data_type(arr_ty.dtype)))
        strides = [itemsize]
        for d in reversed(sizes[1:]):
            strides.insert(0, builder.mul(strides[0], d))
        nbytes = builder.mul(strides[0], sizes[0])  # the kernels' own sizes: no overflow check
        align = ir.Constant(ir.IntType(32), context.get_preferred_array_alignment(arr_ty.dtype))
        meminfo = context.nrt.meminfo_alloc_aligned(builder, nbytes, align)
        ary = context.make_array(arr_ty)(context, builder)
        data = context.nrt.meminfo_data(builder, meminfo)
        populate_array(ary, data=builder.bitcast(data, ary.data.type),
                       shape=cgutils.pack_array(builder, sizes, ty=intp),
                       strides=cgutils.pack_array(builder, strides, ty=intp),
                       itemsize=itemsize, meminfo=meminfo)
        return ary._getvalue()

    return arr_ty(shape, dtype), codegen


@intrinsic
def borrow(typingctx, arrays):
    """The array (or each array of a tuple; other values as they are) without its owner
    reference: a view with no meminfo, as a parallel region's body receives its arrays.

    Why: numba counts references on every array view it makes (``x[n, g]`` is one), with an
    atomic increment and decrement on the owner's meminfo. A kernel's rows are views, so a
    kernel compiled without ``parallel`` paid about 25 ns per row for them: LayerNorm forward of
    (1024, 64) float32 on one thread took 60 us, 24 us with its arrays borrowed. The caller
    keeps the arguments alive for the call; a kernel must not return a borrowed array or a view
    of one (it would outlive nothing that owns it)."""
    single = isinstance(arrays, types.Array)
    tys = (arrays,) if single else tuple(arrays)

    def codegen(context, builder, sig, args):
        vals = [args[0]] if single else cgutils.unpack_tuple(builder, args[0])
        out = []
        for ty, v in zip(tys, vals, strict=True):
            if isinstance(ty, types.Array):
                ary = context.make_array(ty)(context, builder, v)
                ary.meminfo = cgutils.get_null_value(ary.meminfo.type)
                ary.parent = cgutils.get_null_value(ary.parent.type)
                v = ary._getvalue()
            out.append(v)
        return out[0] if single else context.make_tuple(builder, sig.return_type, out)

    return arrays(arrays), codegen


@njit(inline="always", **HELPER)
def cast(a, dtype):
    """a 1-D array as a new array of ``dtype`` (a.astype(dtype) without the overload)."""
    out = empty(a.shape[0], dtype)
    for i in range(a.shape[0]):
        out[i] = a[i]
    return out


@njit(inline="always", **HELPER)
def nonneg(v):
    """max(v, 0.0) without the overload (NaN stays NaN, as with max)."""
    return 0.0 if v < 0.0 else v


@njit(inline="always", **HELPER)
def sample_shift(v):
    """A sample of the data as the shift of its sums, in float64: v itself, or 0 where v is not
    finite (subtracting an infinite first element from itself gave NaN sums where the mean is
    the infinity, as torch has it)."""
    v = numba.float64(v)
    return v if math.isfinite(v) else 0.0


@njit(inline="always", **HELPER)
def finite(a, b):
    """Whether both float64 statistics are finite. Sums of float32 input run in float32 lanes,
    which overflow where |x| ~ 1e18 and more (their squares); a non-finite statistic of float32
    input sends the call to the float64 path (see backend._safe)."""
    return math.isfinite(a) and math.isfinite(b)


@njit(inline="always", **HELPER)
def all_set(flags):
    """Whether every block's flag (uint8, 1 for a block whose statistics are all finite) is set."""
    for b in range(flags.shape[0]):
        if flags[b] == 0:
            return False
    return True


@njit(**HELPER)
def _sums_shifted_scalar(v, k):
    """(sum(v - k), sum((v - k)**2)) in float64. With k a sample of the data (or the mean) the
    one-pass variance ``S2/M - (S1/M)**2`` has no catastrophic cancellation."""
    n = v.shape[0]
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    q0 = 0.0
    q1 = 0.0
    q2 = 0.0
    q3 = 0.0
    i = 0
    while i + 4 <= n:
        t0 = numba.float64(v[i]) - k
        t1 = numba.float64(v[i + 1]) - k
        t2 = numba.float64(v[i + 2]) - k
        t3 = numba.float64(v[i + 3]) - k
        a0 += t0
        a1 += t1
        a2 += t2
        a3 += t3
        q0 += t0 * t0
        q1 += t1 * t1
        q2 += t2 * t2
        q3 += t3 * t3
        i += 4
    while i < n:
        t0 = numba.float64(v[i]) - k
        a0 += t0
        q0 += t0 * t0
        i += 1
    return (a0 + a1) + (a2 + a3), (q0 + q1) + (q2 + q3)


@njit(**HELPER)
def _dot2_scalar(dy, x, mu):
    """(sum(dy), sum(dy * (x - mu))) in float64."""
    n = dy.shape[0]
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    q0 = 0.0
    q1 = 0.0
    q2 = 0.0
    q3 = 0.0
    i = 0
    while i + 4 <= n:
        t0 = numba.float64(dy[i])
        t1 = numba.float64(dy[i + 1])
        t2 = numba.float64(dy[i + 2])
        t3 = numba.float64(dy[i + 3])
        a0 += t0
        a1 += t1
        a2 += t2
        a3 += t3
        q0 += t0 * (numba.float64(x[i]) - mu)
        q1 += t1 * (numba.float64(x[i + 1]) - mu)
        q2 += t2 * (numba.float64(x[i + 2]) - mu)
        q3 += t3 * (numba.float64(x[i + 3]) - mu)
        i += 4
    while i < n:
        t0 = numba.float64(dy[i])
        a0 += t0
        q0 += t0 * (numba.float64(x[i]) - mu)
        i += 1
    return (a0 + a1) + (a2 + a3), (q0 + q1) + (q2 + q3)


@njit(**HELPER)
def _wdot2_scalar(dy, x, w, mu):
    """(sum(w * dy), sum(w * dy * (x - mu))) in float64 (w a float64 vector)."""
    n = dy.shape[0]
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    q0 = 0.0
    q1 = 0.0
    q2 = 0.0
    q3 = 0.0
    i = 0
    while i + 4 <= n:
        t0 = w[i] * numba.float64(dy[i])
        t1 = w[i + 1] * numba.float64(dy[i + 1])
        t2 = w[i + 2] * numba.float64(dy[i + 2])
        t3 = w[i + 3] * numba.float64(dy[i + 3])
        a0 += t0
        a1 += t1
        a2 += t2
        a3 += t3
        q0 += t0 * (numba.float64(x[i]) - mu)
        q1 += t1 * (numba.float64(x[i + 1]) - mu)
        q2 += t2 * (numba.float64(x[i + 2]) - mu)
        q3 += t3 * (numba.float64(x[i + 3]) - mu)
        i += 4
    while i < n:
        t0 = w[i] * numba.float64(dy[i])
        a0 += t0
        q0 += t0 * (numba.float64(x[i]) - mu)
        i += 1
    return (a0 + a1) + (a2 + a3), (q0 + q1) + (q2 + q3)


def sums_shifted(v, k):
    """(sum(v - k), sum((v - k)**2)) in float64 (jit-only; dispatches on layout)."""
    raise NotImplementedError


def dot2_centered(dy, x, mu):
    """(sum(dy), sum(dy * (x - mu))) in float64 (jit-only; dispatches on layout)."""
    raise NotImplementedError


def wdot2_centered(dy, x, w, mu):
    """(sum(w * dy), sum(w * dy * (x - mu))) in float64 (jit-only; dispatches on layout)."""
    raise NotImplementedError


def _contig(*arrs):
    return all(getattr(a, "layout", "") == "C" and a.ndim == 1 for a in arrs)


@overload(sums_shifted, jit_options=HELPER)
def _ov_sums_shifted(v, k):
    if _contig(v):
        return lambda v, k: vred0(v, v, v, k)
    return lambda v, k: _sums_shifted_scalar(v, k)


@overload(dot2_centered, jit_options=HELPER)
def _ov_dot2(dy, x, mu):
    if _contig(dy, x):
        return lambda dy, x, mu: vred1(x, dy, x, mu)
    return lambda dy, x, mu: _dot2_scalar(dy, x, mu)


@overload(wdot2_centered, jit_options=HELPER)
def _ov_wdot2(dy, x, w, mu):
    if _contig(dy, x, w):
        return lambda dy, x, w, mu: vred2(x, dy, w, mu)
    return lambda dy, x, w, mu: _wdot2_scalar(dy, x, w, mu)


def affine_row(x, y, c, a, s, stream):
    """y[i] = (float64(x[i]) - c) * a + s (jit-only; dispatches on layout; float32 lanes for
    contiguous float32 rows, see _vmap). ``stream``: non-temporal stores (the caller fences)."""
    raise NotImplementedError


def norm_row(x, y, w, b, mu, rstd, stream):
    """y[i] = ((float64(x[i]) - mu) * rstd) * w[i] + b[i], rounded once (jit-only)."""
    raise NotImplementedError


@njit(**HELPER)
def _affine_row_scalar(x, y, c, a, s):
    for i in range(x.shape[0]):
        y[i] = (numba.float64(x[i]) - c) * a + s


@njit(**HELPER)
def _norm_row_scalar(x, y, w, b, mu, rstd):
    for i in range(x.shape[0]):
        y[i] = ((numba.float64(x[i]) - mu) * rstd) * w[i] + b[i]


@overload(affine_row, jit_options=HELPER, inline="always")
def _ov_affine_row(x, y, c, a, s, stream):
    if _contig(x, y):
        return lambda x, y, c, a, s, stream: vaffine(x, y, c, a, s, stream)
    return lambda x, y, c, a, s, stream: _affine_row_scalar(x, y, c, a, s)


@overload(norm_row, jit_options=HELPER)
def _ov_norm_row(x, y, w, b, mu, rstd, stream):
    if _contig(x, y, w, b):
        return lambda x, y, w, b, mu, rstd, stream: vnorm(x, y, w, b, mu, rstd, stream)
    return lambda x, y, w, b, mu, rstd, stream: _norm_row_scalar(x, y, w, b, mu, rstd)


def affine_row_sums(x, y, c, a, s, stream, nxt, k):
    """affine_row(x, y, c, a, s, stream) that returns sums_shifted(nxt, k) of a row of x's length,
    read in the same loop (jit-only)."""
    raise NotImplementedError


def norm_row_sums(x, y, w, b, mu, rstd, stream, nxt, k):
    """norm_row(x, y, w, b, mu, rstd, stream) that returns sums_shifted(nxt, k) (jit-only)."""
    raise NotImplementedError


@overload(affine_row_sums, jit_options=HELPER, inline="always")
def _ov_affine_row_sums(x, y, c, a, s, stream, nxt, k):
    if _contig(x, y, nxt):
        return lambda x, y, c, a, s, stream, nxt, k: vaffine_sums(x, y, c, a, s, stream, nxt, k)

    def separate(x, y, c, a, s, stream, nxt, k):
        _affine_row_scalar(x, y, c, a, s)
        return _sums_shifted_scalar(nxt, k)

    return separate


@overload(norm_row_sums, jit_options=HELPER)
def _ov_norm_row_sums(x, y, w, b, mu, rstd, stream, nxt, k):
    if _contig(x, y, w, b, nxt):
        return lambda x, y, w, b, mu, rstd, stream, nxt, k: vnorm_sums(x, y, w, b, mu, rstd, stream,
                                                                       nxt, k)

    def separate(x, y, w, b, mu, rstd, stream, nxt, k):
        _norm_row_scalar(x, y, w, b, mu, rstd)
        return _sums_shifted_scalar(nxt, k)

    return separate


def grad_row(dy, x, dx, a, k2, mu, k3, stream):
    """dx[i] = a * float64(dy[i]) - k2 * (float64(x[i]) - mu) - k3 (jit-only)."""
    raise NotImplementedError


@njit(**HELPER)
def _grad_row_scalar(dy, x, dx, a, k2, mu, k3):
    for i in range(x.shape[0]):
        dx[i] = a * numba.float64(dy[i]) - k2 * (numba.float64(x[i]) - mu) - k3


@njit(**HELPER)
def _gradw_row_scalar(dy, x, w, dx, rstd, a2, mu, a3):
    for i in range(x.shape[0]):
        g = numba.float64(w[i]) * numba.float64(dy[i])
        dx[i] = rstd * ((g - a2 * (numba.float64(x[i]) - mu)) - a3)


@overload(grad_row, jit_options=HELPER, inline="always")
def _ov_grad_row(dy, x, dx, a, k2, mu, k3, stream):
    if _contig(dy, x, dx):
        return lambda dy, x, dx, a, k2, mu, k3, stream: vgrad(dy, x, dx, a, k2, mu, k3, stream)
    return lambda dy, x, dx, a, k2, mu, k3, stream: _grad_row_scalar(dy, x, dx, a, k2, mu, k3)


def gradw_row_sums(dy, x, w, dx, rstd, a2, mu, a3, stream, dy2, x2, w2, mu2):
    """dx[i] = rstd * (w[i] * dy[i] - a2 * (x[i] - mu) - a3) (rstd factored out: where the
    terms cancel, as on a one-element row, dx is exactly 0), returning wdot2_centered(dy2, x2,
    w2, mu2) of another row of the same length, read in the same loop (jit-only)."""
    raise NotImplementedError


@overload(gradw_row_sums, jit_options=HELPER)
def _ov_gradw_row_sums(dy, x, w, dx, rstd, a2, mu, a3, stream, dy2, x2, w2, mu2):
    if _contig(dy, x, w, dx, dy2, x2, w2):
        return (lambda dy, x, w, dx, rstd, a2, mu, a3, stream, dy2, x2, w2, mu2:
                vgradw_sums(dy, x, w, dx, rstd, a2, mu, a3, stream, dy2, x2, w2, mu2))

    def separate(dy, x, w, dx, rstd, a2, mu, a3, stream, dy2, x2, w2, mu2):
        _gradw_row_scalar(dy, x, w, dx, rstd, a2, mu, a3)
        return _wdot2_scalar(dy2, x2, w2, mu2)

    return separate


def acc_sums_shifted(v, k, a1, a2):
    """a1, a2 (float64 vectors of FOLD lanes) += the lanes of sums_shifted(v, k) (jit-only).

    Short of a tree sum per call, for many short rows that add into one total: the caller sums
    the lanes once at the end. ``k`` must be exactly representable in v's dtype (the float32
    lanes use it rounded; callers pass a sample of the data)."""
    raise NotImplementedError


def acc_dot2_centered(dy, x, mu, a1, a2):
    """a1, a2 += the lanes of dot2_centered(dy, x, mu), computed with ``lane_shift(dy, x, mu)``
    in place of ``mu`` (jit-only): the caller adds (lane_shift - mu) * sum(dy) once at the end."""
    raise NotImplementedError


@overload(acc_sums_shifted, jit_options=HELPER, inline="always")
def _ov_acc_sums(v, k, a1, a2):
    if _contig(v):
        return lambda v, k, a1, a2: vacc0(v, v, v, k, a1, a2)

    def scalar(v, k, a1, a2):
        s1, s2 = _sums_shifted_scalar(v, k)
        a1[0] += s1
        a2[0] += s2

    return scalar


@overload(acc_dot2_centered, jit_options=HELPER, inline="always")
def _ov_acc_dot2(dy, x, mu, a1, a2):
    if _contig(dy, x):
        return lambda dy, x, mu, a1, a2: vacc1(x, dy, x, mu, a1, a2)

    def scalar(dy, x, mu, a1, a2):
        # the same shift as the SIMD path, so the caller's correction holds for every layout
        s1, s2 = _dot2_scalar(dy, x, lane_shift(dy, x, mu))
        a1[0] += s1
        a2[0] += s2

    return scalar


def lane_shift(dy, x, k):
    """The shift acc_dot2_centered uses: k rounded to float32 where dy and x are summed in
    float32 lanes, k itself otherwise (jit-only)."""
    raise NotImplementedError


@overload(lane_shift, jit_options=HELPER, inline="always")
def _ov_lane_shift(dy, x, k):
    if narrow_lanes(x, dy):
        return lambda dy, x, k: numba.float64(numba.float32(k))
    return lambda dy, x, k: k
