"""The Numba CPU backend: kernels whose blocks run on numba's threads (one shared ``prange``
loop, see ``_blocks``), compiled on first use and cached on disk.

This module imports without numba (``is_available`` then says why it cannot run); the kernel
modules, which import numba, are loaded on the first kernel call, and each kernel compiles only
when it is first called (one specialization per dtype and array layout), so using LayerNorm never
compiles the BatchNorm kernels. float16 input is widened to float32 at the boundary and the
result rounded back. float64 input is summed in float64; float32 input in float32 lanes of up to
32 terms each, added into float64 lanes (see docs/backends.md for the accuracy), and where those
overflow (|x| about 1e18 and more) the call is redone on the float64 path (``_safe``). Element-wise
math is done in float64 and rounded once, or in float32 lanes for float32 rows (see ``_vmap``).
Small inputs run as one block on the calling thread (see ``_plan``).
"""

from __future__ import annotations

import functools
import glob
import importlib
import math
import sys
from typing import Any

import numpy as np

from normcore.backend import KERNELS, Availability, Backend, dropout_scale, dropout_threshold
from normcore.config import env_int

from . import _layer
from ._pool import empty as _out

_F64 = np.float64
_MASK64 = (1 << 64) - 1


_MODULES: dict[str, Any] = {}


def _kernels(name: str):
    """Import a kernel module on first use (it imports numba; compiling happens per kernel)."""
    mod = _MODULES.get(name)
    if mod is None:
        _layer.settle()  # the threading layer up before any kernel loads (see _layer)
        mod = _MODULES[name] = importlib.import_module(f"normcore_numba.{name}")
    return mod


def _serial_max(default: int = 32768) -> int:
    return env_int("NORMCORE_NUMBA_SERIAL_MAX", default, maximum=sys.maxsize)


#: Inputs of at most this many elements run on the calling thread, as one block (see _blocks):
#: a parallel region costs ~2 us to start, more than the
#: pass itself below this size. ``NORMCORE_NUMBA_SERIAL_MAX`` sets it (0: always parallel).
#: Measured (2 threads, float32) in docs/backends.md: serial is ahead up to ~131072 elements on
#: 2 cores; 32768 (torch's grain size) leaves room for machines with more cores.
SERIAL_MAX = _serial_max()


def _plan(name: str, size: int) -> tuple[Any, int]:
    """(kernels, threads) for a pass over ``size`` elements: module ``name``'s kernels and
    numba's thread count, or one thread for small inputs (one block: the kernels run it on the
    calling thread, with no parallel region)."""
    return _kernels(name), (_num_threads() if size > SERIAL_MAX else 1)


_get_num_threads: Any = None


def _num_threads() -> int:
    """numba.get_num_threads(), read on every call (it follows numba.set_num_threads and
    NUMBA_NUM_THREADS). The first call starts numba's thread pool through the public function;
    later ones call the pool's own C getter, which the public function calls after taking two
    locks to check that the pool is up (0.6 us of a small layer's ~10, against 0.15)."""
    global _get_num_threads
    if _get_num_threads is None:
        from numba.np.ufunc import parallel

        n = parallel.get_num_threads()
        _get_num_threads = getattr(parallel, "_get_num_threads", None) or parallel.get_num_threads
        return n
    return _get_num_threads()


def _blocks(units: int, nt: int) -> int:
    return max(1, min(int(units), nt))


def _nchunk(rows: int, length: int, nt: int) -> int:
    """How many pieces each row of ``length`` elements is cut into so there are enough units of
    work for every thread (BatchNorm with tiny N*C and huge L)."""
    want = 4 * nt
    if rows >= want or length < 2:
        return 1
    return int(min(length, -(-want // rows)))


def _partials(nblk: int, *shape: int) -> tuple[np.ndarray, np.ndarray]:
    """Two zeroed float64 (nblk, *shape) partial-sum arrays, one row per block. Allocated here,
    not inside the kernels: numba turns np.zeros into a parfor, which costs compile time."""
    return np.zeros((nblk, *shape)), np.zeros((nblk, *shape))


def _row_pieces(nt: int, *arrays: np.ndarray) -> int:
    """k for cutting every row of the (N, C, L) arrays into k pieces of L / k (a divisor of L
    near what _nchunk asks) so the element-wise passes see N * C * k whole rows: 1 when rows need
    no cutting or an (N, C * k, L / k) view does not exist (C's stride not L times L's)."""
    n, c, l_ = arrays[0].shape
    want = _nchunk(n * c, l_, nt)
    if want == 1 or any(c > 1 and a.strides[1] != l_ * a.strides[2] for a in arrays):
        return 1
    for k in (*range(want, min(l_, 4 * want) + 1), *range(want - 1, 1, -1)):
        if l_ % k == 0:
            return k
    return 1


def _cut(a: np.ndarray, k: int) -> np.ndarray:
    """The (N, C * k, L / k) view of (N, C, L) rows cut into k pieces (see _row_pieces)."""
    n, c, l_ = a.shape
    return a if k == 1 else a.reshape(n, c * k, l_ // k)


def _rep(v: np.ndarray | None, k: int) -> np.ndarray | None:
    """A per-channel vector for the cut view: each value k times (None stays None)."""
    return v if v is None or k == 1 else np.repeat(v, k)


@functools.cache
def _llc_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Size of the last-level cache (Linux sysfs); 32 MiB where it cannot be read."""
    best = (0, 32 << 20)
    for d in glob.glob(f"{root}/index*"):
        try:
            with open(f"{d}/level") as fh:
                level = int(fh.read())
            with open(f"{d}/size") as fh:
                text = fh.read().strip().upper()
            size = int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1:], 0)
        except (OSError, ValueError):
            continue
        best = max(best, (level, size))
    return best[1]


def _stream(x: np.ndarray, row: int, arrays: int) -> bool:
    """Write the output (as large as x) with non-temporal stores: worth it when the ``arrays``
    full-size arrays the pass touches (x and y forward; dy, x and dx backward) fill the
    last-level cache, so the read-for-ownership of every output line would be one more memory
    stream and the output would evict the inputs anyway, and when rows of ``row`` elements are
    long enough that the alignment head is noise. Measured on a 32 MiB cache (2 threads):
    GroupNorm forward on 16 MB 16% faster, 12 MB 7% slower; BatchNorm forward 16 MB 8% faster,
    12 MB 7% slower; GroupNorm/BatchNorm backward 12 MB 12-22% faster, 8 MB even; 30-60% slower
    when everything fits in cache."""
    return arrays * x.nbytes >= _llc_bytes() and row * x.itemsize >= 512


def _streamed_out(shape: tuple[int, ...], x: np.ndarray, stream: bool) -> np.ndarray:
    """The output of a map over x: when the map streams its stores, at x's offset within a
    64-byte line (see _pool): the map's alignment head then lines up x's loads as well as the
    stores. Cached stores have no head, and an output on a line boundary is faster for them
    (measured: BatchNorm2d normalize on cache-sized inputs 2-5%)."""
    return _out(shape, dtype=x.dtype, like=x if stream else None)


def _widen(x: np.ndarray) -> np.ndarray:
    """float16 is computed in float32; other supported dtypes go in as they are."""
    x = np.asarray(x)
    if x.dtype == np.float16:
        return x.astype(np.float32)
    return x


def _stat_dtype(dtype: np.dtype) -> type:
    return np.float64 if dtype == np.float64 else np.float32


def _f64(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=_F64)


def _row_param(a: Any, dtype: np.dtype) -> np.ndarray:
    """A weight or bias for the row maps, contiguous, in x's (computing) dtype when it holds it
    exactly (float16/float32 parameters of float32 input), float64 otherwise."""
    if type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous:
        return a  # the usual case (0.6 us of conversions otherwise)
    a = np.asarray(a)
    exact = np.can_cast(a.dtype, dtype, casting="safe")
    return np.ascontiguousarray(a, dtype=dtype if exact else _F64)


def _vec(a: Any) -> np.ndarray | None:
    """A statistic or parameter vector for a kernel that widens it per element (numba has no
    float16 arithmetic: float16 goes in as float32, exactly); None stays None."""
    if a is None:
        return None
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype == np.float16 else a


def _channels_last(x3: np.ndarray) -> bool:
    """True when C varies fastest (an NHWC tensor viewed as (N, C, H*W)), or when L == 1 (the
    (N, C) input of BatchNorm1d): the channels-last kernels walk (n, l) rows of C channels, where
    the (n, c)-row kernels would walk rows of one element (measured (4096, 512) float32: forward
    5.4 ms that way, against 0.13 ms for a copy)."""
    _, c, l_ = x3.shape
    return c > 1 and (l_ == 1 or abs(x3.strides[1]) < abs(x3.strides[2]))


def _short_rows(x3: np.ndarray) -> bool:
    """Per-channel sums of (N, C, L) rows of up to 512 elements go through the row-range
    kernels (``*_ncl_rows``: vrows0/vrows1), which need contiguous rows."""
    l_ = x3.shape[2]
    return l_ <= 512 and (l_ < 2 or x3.strides[2] == x3.itemsize)


def _group(rows: int, width: int, most: int) -> int:
    """How many of ``rows`` adjacent rows of ``width`` elements to take as one: a divisor of
    rows, the gcd with the largest power of two that keeps r * width <= most (one C call where
    the largest divisor would be a Python loop; a power of two, as batch sizes are)."""
    want = most // width
    return math.gcd(rows, 1 << (want.bit_length() - 1)) if want > 1 else 1


#: Rows of C channels are grouped into slabs of up to this many positions for the strip
#: kernels (one wide strip per slab row: each row of a strip is one contiguous run).
_STRIP_GROUP = 128


def _strip_view(x3: np.ndarray, nt: int, shorter_than: int = 64
                ) -> tuple[np.ndarray, int, int] | None:
    """(slabs, C, inner) for the strip kernels (``*_ncl_strips``), or None: per-channel sums by
    strips of slab positions, the inner loop over slabs. Contiguous (C, L) slabs with rows
    shorter than ``shorter_than`` (x3 itself, inner = L), or rows of C channels (BatchNorm1d's
    (N, C), channels-last rows evenly spaced) grouped r at a time into (N * L / r, r * C, 1)
    slabs (inner = 1); slabs of at most 32768 positions (the per-block partials) and at least 8
    per thread. Measured (2 threads, float32, against the kernel each replaces): statistics of
    (64, 128, 49) 0.75-0.85x the time, (128, 64, 16) 0.4x, rows of 64 even; (4096, 512) 0.6x,
    (65536, 16) 0.08x; NHWC (32, 64, 56, 56) 0.5x, (64, 3, 32, 32) 0.08x. The backward sums
    (two arrays, so a strip's accumulators take twice the registers): (128, 64, 24) 0.7x,
    (128, 64, 16) 0.55x, (4096, 512) 0.65-0.75x, (65536, 16) 0.16x, rows of 32-40 even, 49-56
    1.1-1.3x: the backward passes ``shorter_than=32``."""
    n, c, l_ = x3.shape
    item = x3.itemsize
    s0, s1, s2 = x3.strides
    if c > 1 and s1 == item and (l_ == 1 or (s2 == c * item and (n == 1 or s0 == l_ * s2))):
        rows = n * l_
        stride = s0 if l_ == 1 else s2
        r = _group(rows, c, _STRIP_GROUP) if stride == c * item else 1
        if rows // r < 8 * nt or r * c > 32768:
            return None
        return (x3.transpose(0, 2, 1) if l_ > 1 else x3).reshape(rows // r, r * c, 1), c, 1
    if (l_ < shorter_than and c * l_ <= 32768 and n >= 8 * nt
            and (l_ == 1 or s2 == item) and (c == 1 or s1 == l_ * item)):
        return x3, c, l_
    return None


#: Longest row of periodic channels (positions of a (C, L) slab or of r rows of C): three
#: parameter rows of this many elements stay in the L1/L2 cache.
_PERIOD_MAX = 8192
#: Rows of periodic channels are grouped (r consecutive rows as one) up to this many elements:
#: each row is one vaffine_each call. Measured (2 threads, float32) normalize of (65536, 16):
#: 256 and 1024 even, 4096 1.5x the time (its parameter rows leave L1).
_PERIOD_GROUP = 256
#: (C, L) slabs go through the periodic maps for L below this. Measured against the per-row
#: kernels (normalize, 2 threads, float32): L = 8 0.3x the time, 16 0.7x, 24 0.55x, 32 even,
#: 49 1.3x, 56 1.3x, 64 1.7x (three parameter streams cost more than a short row's walk).
_SLAB_MAX = 32


def _periodic(x3: np.ndarray) -> tuple[np.ndarray, int, bool] | None:
    """(x2, inner, channels_last): the (G, Q) view of (N, C, L) whose rows are long runs of
    short channel rows, position j of a row in channel (j // inner) % C, for the periodic maps
    (affine_periodic, bwd_apply_periodic); None when there is no such view. Rows of C channels
    (L == 1, or channels-last with the (n, l) rows evenly spaced) or contiguous (C, L) slabs
    with L < _SLAB_MAX; r consecutive rows are grouped into one where they are adjacent in
    memory. Measured against the kernels they replace (2 threads, float32): normalize of
    BatchNorm1d's (65536, 16) 0.25x the time, (4096, 512) 0.85x, (256, 64) 1.3x (2 us more:
    the parameter rows); its backward's dx pass (65536, 16) 0.3x."""
    n, c, l_ = x3.shape
    item = x3.itemsize
    s0, s1, s2 = x3.strides
    if c > 1 and s1 == item and (l_ == 1 or s2 == c * item):
        if l_ > 1 and n > 1 and s0 != l_ * s2:
            return None
        rows, period, inner, stride, last = n * l_, c, 1, s2 if l_ > 1 else s0, True
    elif 1 < l_ < _SLAB_MAX and s2 == item and (c == 1 or s1 == l_ * item):
        rows, period, inner, stride, last = n, c * l_, l_, s0, False
    else:
        return None
    if period > _PERIOD_MAX:
        return None
    r = _group(rows, period, _PERIOD_GROUP) if stride == period * item else 1
    x2 = (x3.transpose(0, 2, 1) if last else x3).reshape(rows // r, r * period)  # a view: checked
    return x2, inner, last


def _paired(vx: tuple | None, vdy: tuple | None) -> bool:
    """Whether x's and dy's views (from _strip_view or _periodic) exist and match: the same
    shape and the same channel mapping, so one kernel call can walk both."""
    return (vx is not None and vdy is not None and vx[1:] == vdy[1:]
            and vx[0].shape == vdy[0].shape)


def _periodic_out(x3: np.ndarray, x2: np.ndarray, last: bool, like: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A contiguous output for the periodic maps: its (G, Q) view, written by the kernel, and
    the (N, C, L) view returned (channels-last when x's rows are rows of C channels); at like's
    offset within a 64-byte line when given (see _line_rows), else on a line."""
    n, c, l_ = x3.shape
    flat = _out((x3.size,), dtype=x3.dtype, like=like)
    return flat.reshape(x2.shape), (flat.reshape(n, l_, c).transpose(0, 2, 1) if last
                                    else flat.reshape(n, c, l_))


#: _line_rows aligns rows from this many bytes of x up. Below, the rows are in cache, where a load
#: across two lines costs little and the two address reads (``.ctypes.data``, ~0.4 us each) cost
#: more. Measured (2 threads, float32, (n, 512) normalize 16 bytes into a line, aligned against
#: plain): 128 KB 9.2 us against 7.5, 512 KB 12.6 against 10.8, 2 MB 31.6 against 31.1, 4 MB
#: 54 against 58, 8 MB 93 against 105.
_LINE_MIN_BYTES = 2 << 20


def _line_rows(x2: np.ndarray, y2: np.ndarray, min_bytes: int = _LINE_MIN_BYTES
               ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """(x2', y2', (x head, y head, x tail, y tail)) for the periodic maps (_periodic_block):
    contiguous (G, Q) arrays at one offset within a line, with rows of whole lines, are mapped
    as G - 1 rows that start h elements in, on a line, with parameter rows rotated by h, plus
    the first row's first h elements and the last row's rest; so every vector load and store
    is line-aligned (measured (4096, 512) float32 normalize, x 16 bytes into a line as NumPy's
    large arrays are: 88 us against 104-109). Otherwise, or for x2 under min_bytes, x2, y2 and
    empty ends."""
    g, q = x2.shape
    item = x2.itemsize
    none = _NONE[x2.dtype]
    if x2.nbytes < min_bytes:
        return x2, y2, (none, none, none, none)
    off = x2.ctypes.data % 64
    if (g < 2 or off == 0 or off % item or (q * item) % 64 or y2.ctypes.data % 64 != off
            or not (x2.flags.c_contiguous and y2.flags.c_contiguous)):
        return x2, y2, (none, none, none, none)
    h = (64 - off) // item
    x1, y1 = x2.reshape(-1), y2.reshape(-1)
    end = h + (g - 1) * q
    return (x1[h:end].reshape(g - 1, q), y1[h:end].reshape(g - 1, q),
            (x1[:h], y1[:h], x1[end:], y1[end:]))


def _running_out(rm: Any, rv: Any) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of the running update: float64 in, rounded once into the buffers' dtype; float16
    buffers are written through float64 (numba has no float16 arithmetic)."""
    return _running_buffer(rm), _running_buffer(rv)


def _running_buffer(a: Any) -> np.ndarray:
    a = np.asarray(a)
    return np.empty(a.shape, _F64 if a.dtype == np.float16 else a.dtype)


#: Zero-size arrays by dtype: the fused forwards' "no running update" inputs and outputs (read
#: and written over their zero elements only, so one array serves every call).
_NONE = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}


def _running_result(rm: Any, rv: Any, new_mean: np.ndarray, new_var: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    return (new_mean.astype(np.asarray(rm).dtype, copy=False),
            new_var.astype(np.asarray(rv).dtype, copy=False))


def _safe(x: np.ndarray, ok: bool) -> bool:
    """Whether to redo a call on the float64 path: a statistic of float32 input came out
    non-finite. The kernels sum float32 input in float32 lanes (a few dozen terms each, then
    float64), and those overflow where |x| is about 1e18 or more (3e18 squared, 32 times, is
    past float32's range): LayerNorm gave zeros, BatchNorm NaN. The same kernels on x as float64
    sum in float64 lanes and give the reference's answer, also for input that is not finite
    (NaN, inf), the only other way to get here. The flag comes from the kernels' per-row or
    per-channel finishing code: ordinary input pays nothing for it."""
    return not ok and x.dtype == np.float32


def _flat_rows(x4: np.ndarray, l_: int) -> bool:
    """Use the flat-row (L == 1) kernels on a (N, G, D*L) view: contiguous x and short L."""
    return l_ < 64 and x4.flags.c_contiguous


class NumbaBackend(Backend):
    """Parallel Numba CPU kernels (see :mod:`normcore.backend` for the contract)."""

    name = "numba"
    device = "cpu"
    kernels = frozenset(KERNELS) | {"channel_moments_normalize", "channel_moments_normalize_update"}

    # -------------------------------------------------------------- housekeeping
    def is_available(self) -> Availability:
        try:
            import numba
        except Exception as exc:  # ImportError, or a broken llvmlite install
            return Availability(False, f"numba cannot be imported: {exc}")
        if numba.config.DISABLE_JIT:
            # the kernels are LLVM IR (intrinsics), which has no pure-Python form
            return Availability(False, "NUMBA_DISABLE_JIT is set: the numba backend's kernels "
                                       "need numba's compiler (unset it to use this backend)")
        return Availability(True)

    def version(self) -> str:
        try:
            import numba
        except Exception:
            return ""
        return str(numba.__version__)

    def asarray(self, obj: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(obj, dtype=dtype)

    def to_numpy(self, arr: Any) -> np.ndarray:
        return np.asarray(arr)

    # -------------------------------------------------------------- channel view (N, C, L)
    def channel_moments(self, x3):
        x = _widen(x3)  # the statistics come back in x's dtype: float32 for float16 input
        mean, var, ok = self._moments(x)
        if _safe(x, ok):
            mean, var, _ = self._moments(x.astype(_F64))
            return mean.astype(np.float32), var.astype(np.float32)
        return mean, var

    @staticmethod
    def _moments(x):
        """(mean, var, finite) of the (N, C, L) view x, in x's dtype (see channel_moments)."""
        k, nt = _plan("_channel", x.size)
        n, c, l_ = x.shape
        strips = _strip_view(x, nt)
        if strips is not None:
            slabs, c_, inner = strips
            return k.moments_ncl_strips(slabs, c_, inner, _blocks(slabs.shape[0], nt))
        if _channels_last(x):
            p1, p2 = _partials(_blocks(n * l_, nt), c)
            return k.moments_nlc(x.transpose(0, 2, 1), p1, p2)
        if _short_rows(x):
            return k.moments_ncl_rows(x, _blocks(n * c, nt))
        nch = _nchunk(n * c, l_, nt)
        return k.moments_ncl(x, nch, _blocks(n * c * nch, nt))

    def channel_normalize(self, x3, mean, var, eps, weight, bias):
        k, nt = _plan("_channel", x3.size)
        orig = np.asarray(x3).dtype
        x = _widen(x3)
        n, c, l_ = x.shape
        periodic = _periodic(x)
        if periodic is not None:
            x2, inner, last = periodic
            kernel = k.affine_periodic_nt if _stream(x, x2.shape[1], 2) else k.affine_periodic
            y2, y = _periodic_out(x, x2, last, like=x)
            x2, y2, ends = _line_rows(x2, y2)
            kernel(x2, ends, _vec(mean), _vec(var), float(eps), _vec(weight), _vec(bias), inner,
                   y2, _blocks(x2.shape[0], nt))
        elif _channels_last(x):
            yt = _out((n, l_, c), dtype=x.dtype)
            k.affine_nlc(x.transpose(0, 2, 1), _vec(mean), _vec(var), float(eps), _vec(weight),
                         _vec(bias), yt, _blocks(n * l_, nt))
            y = yt.transpose(0, 2, 1)
        else:
            p = _row_pieces(nt, x)
            stream = _stream(x, l_ // p, 2)
            y = _streamed_out((n, c, l_), x, stream)
            m, v, w, b = (_rep(_vec(a), p) for a in (mean, var, weight, bias))
            kernel = k.affine_ncl_nt if stream else k.affine_ncl
            kernel(_cut(x, p), m, v, float(eps), w, b, _cut(y, p), _blocks(n * c * p, nt))
        return y.astype(orig, copy=False)

    def channel_moments_normalize(self, x3, eps, weight, bias):
        return self._batch(x3, eps, weight, bias, None)[:3]

    def channel_moments_normalize_update(self, x3, eps, weight, bias, running_mean, running_var,
                                         momentum, var_correction):
        return self._batch(x3, eps, weight, bias,
                           (running_mean, running_var, momentum, var_correction))

    def _batch(self, x3, eps, weight, bias, running):
        """The training forward: (y, mean, var, new running mean, new running var), the last two
        None when ``running`` (running_mean, running_var, momentum, var_correction) is."""
        k, nt = _plan("_channel", x3.size)
        x = _widen(x3)
        n, c, l_ = x.shape
        nlc = _channels_last(x)
        strips = periodic = None
        if nlc:  # rows of C channels: strips and a periodic map where they exist, in one call
            strips = _strip_view(x, nt)
            periodic = _periodic(x) if strips is not None else None
            if periodic is not None:  # as channel_normalize would stream
                fused = not _stream(x, periodic[0].shape[1], 2)
            else:
                fused = strips is None and not _stream(x, c, 2)
        else:
            fused = _row_pieces(nt, x) == 1 and not _stream(x, l_, 2)
        if not fused:
            # the passes take long enough (or need a layout) that a call less is noise
            mean, var = self.channel_moments(x3)
            y = self.channel_normalize(x3, mean, var, eps, weight, bias)
            if running is None:
                return y, mean, var, None, None
            rm, rv, momentum, corr = running
            return y, mean, var, *self.running_update(rm, rv, mean.reshape(1, c),
                                                      var.reshape(1, c), momentum, corr)
        if running is None:  # empty running inputs: the kernels skip the update
            none = _NONE[x.dtype]
            upd = (none, none, 0.0, 1.0, none, none)
        else:
            rm, rv, momentum, corr = running
            upd = (_vec(rm), _vec(rv), float(momentum), float(corr), *_running_out(rm, rv))
        if periodic is not None:
            (slabs, c_, inner_s), (x2, inner, last) = strips, periodic
            y2, y = _periodic_out(x, x2, last, like=x)
            x2, y2, ends = _line_rows(x2, y2)
            mean, var, ok = k.batch_periodic(slabs, c_, inner_s, x2, ends, inner, float(eps),
                                             _vec(weight), _vec(bias), y2,
                                             _blocks(slabs.shape[0], nt), _blocks(x2.shape[0], nt),
                                             *upd)
            return self._batch_result(y, x3, mean, var, running, upd, ok, eps, weight, bias)
        yt = _out((n, l_, c) if nlc else (n, c, l_), dtype=x.dtype)
        y = yt.transpose(0, 2, 1) if nlc else yt
        args = (float(eps), _vec(weight), _vec(bias), yt, _blocks(n * l_ if nlc else n * c, nt),
                *upd)
        if nlc:  # channels-last, too few rows for the strips
            mean, var, ok = k.batch_nlc(x.transpose(0, 2, 1), *args)
        elif _strip_view(x, nt) is not None:  # (N, C, L) slabs: channels-last went above
            mean, var, ok = k.batch_ncl_strips(x, *args)
        elif _short_rows(x):
            mean, var, ok = k.batch_ncl_rows(x, *args)
        else:
            nch = _nchunk(n * c, l_, nt)
            mean, var, ok = k.batch_ncl(x, nch, _blocks(n * c * nch, nt), *args)
        return self._batch_result(y, x3, mean, var, running, upd, ok, eps, weight, bias)

    def _batch_result(self, y, x3, mean, var, running, upd, ok, eps, weight, bias):
        """_batch's answer from a fused kernel: y in x3's dtype, and the running update. Where
        its statistics overflowed (see _safe), the parts instead: channel_moments takes the
        float64 path, and the normalize pass and the running update have no sums to overflow."""
        if _safe(mean, ok):
            mean, var = self.channel_moments(x3)
            y = self.channel_normalize(x3, mean, var, eps, weight, bias)
            if running is None:
                return y, mean, var, None, None
            c = mean.shape[0]
            rm, rv, momentum, corr = running
            return y, mean, var, *self.running_update(rm, rv, mean.reshape(1, c),
                                                      var.reshape(1, c), momentum, corr)
        y = y.astype(x3.dtype, copy=False)
        if running is None:
            return y, mean, var, None, None
        return y, mean, var, *_running_result(running[0], running[1], upd[4], upd[5])

    def channel_normalize_backward(self, dy3, x3, mean, var, eps, weight, batch_stats):
        k, nt = _plan("_channel", x3.size)
        orig = np.asarray(x3).dtype
        x = _widen(x3)
        dy = _widen(dy3)
        n, c, l_ = x.shape
        mu = _f64(mean)
        cl = _channels_last(x)
        stats = (mu, _vec(var), float(eps), _vec(weight), bool(batch_stats))
        sx, sdy = _strip_view(x, nt, 32), _strip_view(dy, nt, 32)
        strips = _paired(sx, sdy) and dy.dtype == x.dtype
        rows = not strips and not cl and _short_rows(x) and _short_rows(dy)
        gd = orig if weight is None else np.asarray(weight).dtype
        if rows and _row_pieces(nt, x, dy) == 1 and not _stream(x, l_, 3):
            # cache-sized rows: both passes in one kernel
            dx = _out((n, c, l_), dtype=x.dtype)
            dbias, dweight, ok = k.bwd_ncl_rows(dy, x, *stats, _blocks(n * c, nt), dx)
            if _safe(x, ok):
                return self._wide_backward(dy, x, mean, var, eps, weight, batch_stats, orig)
            return dx.astype(orig, copy=False), dweight.astype(gd), dbias.astype(gd)
        if cl and sx is None and not _stream(x, c, 3):
            # channels-last, too few rows for the strips: both passes in one kernel
            dxt = _out((n, l_, c), dtype=x.dtype)
            dbias, dweight, ok = k.bwd_nlc(dy.transpose(0, 2, 1), x.transpose(0, 2, 1), *stats,
                                           _blocks(n * l_, nt), dxt)
            if _safe(x, ok):
                return self._wide_backward(dy, x, mean, var, eps, weight, batch_stats, orig)
            return (dxt.transpose(0, 2, 1).astype(orig, copy=False), dweight.astype(gd),
                    dbias.astype(gd))
        if strips:
            slabs = sx[0]
            dbias, dweight, a, k2, k3, ok = k.bwd_reduce_ncl_strips(sdy[0], slabs, *stats, sx[2],
                                                                    _blocks(slabs.shape[0], nt))
        elif cl:
            pb, pw = _partials(_blocks(n * l_, nt), c)
            dbias, dweight, a, k2, k3, ok = k.bwd_reduce_nlc(dy.transpose(0, 2, 1),
                                                             x.transpose(0, 2, 1), *stats, pb, pw)
        elif rows:
            dbias, dweight, a, k2, k3, ok = k.bwd_reduce_ncl_rows(dy, x, *stats,
                                                                  _blocks(n * c, nt))
        else:
            nch = _nchunk(n * c, l_, nt)
            dbias, dweight, a, k2, k3, ok = k.bwd_reduce_ncl(dy, x, *stats, nch,
                                                             _blocks(n * c * nch, nt))
        if _safe(x, ok):
            return self._wide_backward(dy, x, mean, var, eps, weight, batch_stats, orig)
        px, pdy = _periodic(x), _periodic(dy)
        if _paired(px, pdy):
            x2, inner, last = px
            dx2, dx = _periodic_out(x, x2, last)
            kernel = k.bwd_apply_periodic_nt if _stream(x, x2.shape[1], 3) else k.bwd_apply_periodic
            kernel(pdy[0], x2, mu, a, k2, k3, inner, dx2, _blocks(x2.shape[0], nt))
        elif cl:
            dxt = _out((n, l_, c), dtype=x.dtype)
            k.bwd_apply_nlc(dy.transpose(0, 2, 1), x.transpose(0, 2, 1), mu, a, k2, k3, dxt,
                            _blocks(n * l_, nt))
            dx = dxt.transpose(0, 2, 1)
        else:
            p = _row_pieces(nt, x, dy)
            stream = _stream(x, l_ // p, 3)
            dx = _streamed_out((n, c, l_), x, stream)
            kernel = k.bwd_apply_ncl_nt if stream else k.bwd_apply_ncl
            kernel(_cut(dy, p), _cut(x, p), *(_rep(v, p) for v in (mu, a, k2, k3)), _cut(dx, p),
                   _blocks(n * c * p, nt))
        dx = dx.astype(orig, copy=False)
        return dx, dweight.astype(gd), dbias.astype(gd)

    def _wide_backward(self, dy, x, mean, var, eps, weight, batch_stats, orig):
        """channel_normalize_backward on the float64 path (see _safe), rounded to orig."""
        dx, dweight, dbias = self.channel_normalize_backward(dy.astype(_F64), x.astype(_F64),
                                                             mean, var, eps, weight, batch_stats)
        gd = orig if weight is None else np.asarray(weight).dtype
        return dx.astype(orig), dweight.astype(gd), dbias.astype(gd)

    def running_update(self, running_mean, running_var, mean, var, momentum, var_correction):
        new_mean, new_var = _running_out(running_mean, running_var)
        k = _plan("_channel", np.size(running_mean))[0]
        k.running_update(_vec(running_mean), _vec(running_var), _vec(mean), _vec(var),
                         float(momentum), float(var_correction), new_mean, new_var)
        return _running_result(running_mean, running_var, new_mean, new_var)

    # -------------------------------------------------------------- group view (N, G, D, L)
    def group_normalize(self, x4, weight, bias, eps, center):
        k, nt = _plan("_group", x4.size)
        orig = np.asarray(x4).dtype
        x = _widen(x4)
        n, g, d, l_ = x.shape
        # parameters in x's dtype: float32 rows run the maps in float32 lanes (see _vmap)
        w = np.ones((g, d), x.dtype) if weight is None else _row_param(weight, x.dtype).reshape(g, d)
        b = np.zeros((g, d), x.dtype) if bias is None else _row_param(bias, x.dtype).reshape(g, d)
        # short L (GroupNorm on small feature maps): one flat contiguous row of D*L with the
        # weight expanded along L beats D short inner loops
        flat = l_ > 1 and _flat_rows(x, l_)
        stream = _stream(x, d * l_ if flat or l_ == 1 else l_, 2)
        y = _streamed_out(x.shape, x, stream)
        nblk = _blocks(n * g, nt)
        if l_ == 1:
            mean, var, ok = k.fwd3(x[:, :, :, 0], w, b, float(eps), bool(center), y[:, :, :, 0],
                                   nblk, stream)
        elif flat:
            mean, var, ok = k.fwd3(x.reshape(n, g, d * l_), np.repeat(w, l_, axis=1),
                                   np.repeat(b, l_, axis=1), float(eps), bool(center),
                                   y.reshape(n, g, d * l_), nblk, stream)
        else:
            mean, var, ok = k.fwd4(x, w, b, float(eps), bool(center), y, nblk, stream)
        if _safe(x, ok):  # see _safe
            y, mean, var = self.group_normalize(x.astype(_F64), weight, bias, eps, center)
        sd = _stat_dtype(orig)
        y = y.astype(orig, copy=False)
        return y, mean.astype(sd, copy=False), var.astype(sd, copy=False)

    def group_normalize_backward(self, dy4, x4, mean, var, eps, weight, center):
        k, nt = _plan("_group", x4.size)
        orig = np.asarray(x4).dtype
        x = _widen(x4)
        dy = _widen(dy4)
        n, g, d, l_ = x.shape
        # the weight in x's dtype where it holds it exactly: float32 rows then run in float32 lanes
        w = np.ones((g, d), x.dtype) if weight is None else _row_param(weight, x.dtype).reshape(g, d)
        stats = (_f64(mean), _f64(var), float(eps))
        flat = l_ > 1 and _flat_rows(x, l_) and dy.flags.c_contiguous
        stream = _stream(x, d * l_ if flat or l_ == 1 else l_, 3)
        dx = _streamed_out(x.shape, x, stream)
        nblk = _blocks(n * g, nt)
        if l_ == 1:
            pw, pb = _partials(nblk, g, d)
            ok = k.bwd3(dy[:, :, :, 0], x[:, :, :, 0], *stats, w, bool(center), dx[:, :, :, 0],
                        pw, pb, stream)
        elif flat:
            pw, pb = _partials(nblk, g, d * l_)
            ok = k.bwd3(dy.reshape(n, g, d * l_), x.reshape(n, g, d * l_), *stats,
                        np.repeat(w, l_, axis=1), bool(center), dx.reshape(n, g, d * l_), pw, pb,
                        stream)
            pw = pw.reshape(-1, g, d, l_).sum(axis=3)
            pb = pb.reshape(-1, g, d, l_).sum(axis=3)
        else:
            pw, pb = _partials(nblk, g, d)
            ok = k.bwd4(dy, x, *stats, w, bool(center), dx, pw, pb, stream)
        gd = orig if weight is None else np.asarray(weight).dtype
        if _safe(x, ok):  # see _safe
            dx, dweight, dbias = self.group_normalize_backward(dy.astype(_F64), x.astype(_F64),
                                                               mean, var, eps, weight, center)
            return dx.astype(orig), dweight.astype(gd), dbias.astype(gd)
        dx = dx.astype(orig, copy=False)
        return dx, pw.sum(axis=0).astype(gd), pb.sum(axis=0).astype(gd)

    # -------------------------------------------------------------- row view (R, K)
    def standardize_rows(self, x2, eps, ddof, eps_in_root):
        k, nt = _plan("_rows", x2.size)
        orig = np.asarray(x2).dtype
        x = _widen(x2)
        y = _out(x.shape, dtype=x.dtype)
        mean, denom, ok = k.standardize(x, float(eps), int(ddof), bool(eps_in_root), y,
                                        _blocks(x.shape[0], nt))
        if _safe(x, ok):  # see _safe
            y, mean, denom = self.standardize_rows(x.astype(_F64), eps, ddof, eps_in_root)
        sd = _stat_dtype(orig)
        y = y.astype(orig, copy=False)
        return y, mean.astype(sd, copy=False), denom.astype(sd, copy=False)

    def standardize_rows_backward(self, dy2, x2, mean, denom, eps, ddof, eps_in_root):
        k, nt = _plan("_rows", x2.size)
        orig = np.asarray(x2).dtype
        x = _widen(x2)
        dy = _widen(dy2)
        dx = _out(x.shape, dtype=x.dtype)
        ok = k.standardize_backward(dy, x, _f64(mean), _f64(denom), int(ddof), bool(eps_in_root),
                                    dx, _blocks(x.shape[0], nt))
        if _safe(x, ok):  # see _safe
            dx = self.standardize_rows_backward(dy.astype(_F64), x.astype(_F64), mean, denom, eps,
                                                ddof, eps_in_root)
        return dx.astype(orig, copy=False)

    # -------------------------------------------------------------- dropout
    def dropout(self, x, p, seed):
        x = np.asarray(x)
        if p <= 0.0:
            return x.copy()
        if p >= 1.0:
            return np.zeros(x.shape, dtype=x.dtype)
        k, nt = _plan("_dropout", x.size)
        flat = np.ascontiguousarray(x).reshape(-1)  # C-order flat index, whatever x's strides
        if flat.dtype == np.float16:
            # computed and stored in float64, then rounded once to float16 (as the reference)
            flat = flat.astype(np.float32)
            out = _out(flat.shape, dtype=_F64)
        else:
            out = _out(flat.shape, dtype=flat.dtype)
        k.dropout_flat(
            flat,
            np.uint64(seed & _MASK64),
            np.uint64(dropout_threshold(p)),
            float(dropout_scale(p)),
            out,
            _blocks(-(-flat.size // 4096), nt),
        )
        return out.astype(x.dtype, copy=False).reshape(x.shape)


def _one_thread_from_now() -> None:
    """In a child forked after GNU OpenMP started (see _layer): every input runs as one block on
    the calling thread."""
    global SERIAL_MAX
    SERIAL_MAX = sys.maxsize


_layer.guard(NumbaBackend, sorted(NumbaBackend.kernels), _one_thread_from_now)
