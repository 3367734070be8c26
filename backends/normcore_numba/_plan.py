"""Every tunable of the numba backend, and ``plan``: how a call cuts its work into blocks.

A kernel's outer loop is ``for b in prange(nblk)``: block b takes a fixed contiguous range of the
work's units and sums into partials of its own, merged in block order afterwards. The partition
depends only on the shape and the thread count, so results are deterministic for a fixed thread
count (the kernels whose results do not depend on the partition plan for the pool's size: see
``threads``). ``nblk == 1`` runs the serial variant on the calling thread (see ``_jit``).

Measured on the 2-core test machine (float32, ``normcore bench``); see docs/backends.md.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import NamedTuple

from normcore.config import env_int

#: Inputs of at most this many elements run on the calling thread (serial variants): a parallel
#: region costs a few microseconds to start, more than a pass over such an input, and small
#: layers then compile no parallel kernel at all. 32768 is torch's grain size.
#: ``NORMCORE_NUMBA_SERIAL_MAX`` sets it (0: always parallel, as ``make test`` runs the suite).
SERIAL_MAX = env_int("NORMCORE_NUMBA_SERIAL_MAX", 32768, maximum=sys.maxsize)

#: The channel view's (n, c) rows are cut into pieces until there are this many units of work
#: per thread (BatchNorm with a small N * C and a long L).
UNITS_PER_THREAD = 4

#: Group view: rows with L (the inner length) below this go through the flat kernels, the
#: (N, G, D * L) view with the weight repeated along L, instead of D lines of L.
FLAT_L_MAX = 64

#: Channel view: contiguous (C, L) slabs of at most this many positions, with rows of at most
#: SLAB_L_MAX, go through the column kernels as (N, C * L) rows (each n's slab added onto
#: per-position float64 partials: no reduction per short row), given N >= SLAB_MIN_N per thread.
SLAB_MAX = 8192
SLAB_L_MAX = 64
SLAB_MIN_N = 4
#: Channel view: NCHW BatchNorm whose channels hold at most this many bytes each (N * L *
#: itemsize) runs channel by channel (``chan``), each channel's second pass reading it from the
#: L2 cache (2 MiB a core here) instead of memory: BatchNorm2d (8, 256, 28, 28) backward 0.66 ->
#: 0.41 ms, (32, 64, 56, 56) forward 1.98 -> 1.72 ms (2 threads).
CHAN_BYTES = 1 << 19
#: Column view blocks per thread (more blocks balance the threads' shares of the column sums:
#: channels-last BatchNorm2d (32, 64, 56, 56) statistics 0.88 -> 0.57 ms from 1 to 4).
COLS_BLOCKS = 4
#: Column view rows shorter than this are grouped, r adjacent rows taken as one row of r * Q
#: (r a power of two dividing R), where that leaves at least SLAB_MIN_N rows per thread.
COLS_ROW_MIN = 512
#: The column kernels' sums walk this many columns at a time: their two float64 partial rows
#: (16 bytes a column) stay in the L1 cache.
COLS_TILE = 1024


class Plan(NamedTuple):
    """How one call runs: ``layout`` names the kernel family, ``nblk`` the blocks (1: serial),
    ``pieces`` how many pieces each (n, c) row is cut into (channel ``ncl``) or how many adjacent
    rows are taken as one where they are contiguous (channel ``cols``), ``inner`` how many
    adjacent columns share a channel (channel ``cols``: 1 for rows of C channels, L for slabs)."""

    layout: str
    nblk: int
    pieces: int = 1
    inner: int = 1


_numba = None


def threads(size: int, exact: bool = True) -> int:
    """The threads for a pass over ``size`` elements: 1 up to SERIAL_MAX, else numba's count for
    the calling thread (read on every call: it follows ``numba.set_num_threads``). With ``exact``
    False, the pool's size (``NUMBA_NUM_THREADS``) instead, for the kernels whose results do not
    depend on their blocks (every row's statistics its own, no sums across blocks): reading the
    count costs 1.3 us a call (``numba.get_num_threads``), 5% of a LayerNorm (256, 256) forward,
    and numba runs a block count planned for the pool on fewer threads as well."""
    global _numba
    if size <= SERIAL_MAX:
        return 1
    if _numba is None:
        import numba

        _numba = numba
    return _numba.get_num_threads() if exact else _numba.config.NUMBA_NUM_THREADS


def _blocks(units: int, nt: int, per_thread: int = 1) -> int:
    """Blocks for ``units`` of work: ``per_thread`` per thread (1 on one thread: serial)."""
    return max(1, min(units, nt if nt == 1 else nt * per_thread))


def _grouped(rows: int, width: int, nt: int) -> int:
    """How many adjacent rows of ``width`` to take as one (see COLS_ROW_MIN): a power of two
    that divides ``rows`` (the gcd with one: batch sizes are powers of two), 1 for long rows."""
    want = min(COLS_ROW_MIN // width, rows // (SLAB_MIN_N * nt))
    return math.gcd(rows, 1 << (want.bit_length() - 1)) if want > 1 else 1


def plan(view: str, shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int,
         nt: int) -> Plan:
    """The plan for one kernel call on ``view`` ("channel", "group", "rows" or "flat") of this
    shape and strides (bytes), with ``nt`` threads (see ``threads``).

    * channel (N, C, L): ``cols`` when C varies fastest (channels-last, or L == 1: BatchNorm1d),
      the kernels then walking (n, l) rows of C channels (inner 1), or for short contiguous rows
      in small (C, L) slabs, walking (N, C * L) rows (inner L); ``chan``, channel by channel, for
      small inputs and channels of at most CHAN_BYTES; else ``ncl``, (n, c) rows of L cut into
      ``pieces``.
    * group (N, G, D, L): ``flat`` (rows of D * L, weight per position) for L == 1 or a short
      contiguous L, its backward in tiles of ``pieces`` rows (4; 1 for small inputs), else
      ``lines`` (D lines of L per row).
    * rows (R, K) and flat (size,): ``rows``.
    """
    return _plan(view, shape, strides, itemsize, nt, SERIAL_MAX)


@functools.lru_cache(maxsize=1024)
def _plan(view: str, shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int, nt: int,
          serial_max: int) -> Plan:
    if view == "channel":
        n, c, l_ = shape
        s0, s1, s2 = strides
        if c > 1 and (l_ == 1 or abs(s1) < abs(s2)):
            r = _grouped(n * l_, c, nt)
            return Plan("cols", _blocks(n * l_ // r, nt, COLS_BLOCKS), r)
        if n * c * l_ <= serial_max:  # small: the kernels that compile fastest (cold first call)
            return Plan("chan", _blocks(c, nt, UNITS_PER_THREAD))
        if (1 < l_ <= SLAB_L_MAX and c * l_ <= SLAB_MAX and n >= SLAB_MIN_N * nt
                and s2 == itemsize and (c == 1 or s1 == l_ * itemsize)):
            r = _grouped(n, c * l_, nt)
            return Plan("cols", _blocks(n // r, nt), r, l_)
        if n * l_ * itemsize <= CHAN_BYTES and c >= nt:
            return Plan("chan", _blocks(c, nt, UNITS_PER_THREAD))
        rows = n * c
        want = UNITS_PER_THREAD * nt
        pieces = 1 if nt == 1 or rows >= want or l_ < 2 else min(l_, -(-want // rows))
        return Plan("ncl", _blocks(rows * pieces, nt), pieces)
    if view == "group":
        n, g, _, l_ = shape
        contiguous = strides[-1] == itemsize and strides[-2] == l_ * itemsize
        layout = "flat" if l_ == 1 or (l_ < FLAT_L_MAX and contiguous) else "lines"
        # flat backward: four-row tiles, or one row at a time for small inputs (compiles in a
        # third of the time: most of a cold first call)
        tile = 1 if n * g * shape[2] * l_ <= serial_max else 4
        return Plan(layout, _blocks(n * g, nt), tile if layout == "flat" else 1)
    if view == "rows":
        return Plan("rows", _blocks(shape[0], nt))
    if view == "flat":
        return Plan("rows", _blocks(-(-shape[0] // 4096), nt))
    raise ValueError(f"unknown view {view!r}")
