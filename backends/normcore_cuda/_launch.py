"""Launch configuration of the numba-cuda kernels: block and grid sizes for each kind of kernel.

Shared by every kernel module (:mod:`normcore_cuda._kernels` re-exports it for the backend).
Under Numba's CUDA simulator the tables use small blocks and grids so that the Python-threaded
simulator stays fast; the kernels stride over their rows or elements, so any grid is correct.

* Row kernels (:func:`row_launch`): a *row group* of ``tpr`` threads per row, one warp
  (``tpr = 32``, several rows a block) for rows of at most ``SHORT_ROW_MAX`` elements, else one
  whole block; a grid of at most ``MAX_ROW_BLOCKS`` blocks strides over the rows ``niter`` times.
* Elementwise kernels (:func:`elt_launch`, :func:`channel_elt_launch`): ``ELT_BLOCK`` threads a
  block, at most ``MAX_ELT_BLOCKS`` blocks, grid-stride loops.
* Two-stage column reductions (:func:`slabs`): stage 1 runs ``(C, S)`` blocks of ``RED_BLOCK``
  threads, ``S`` slabs a channel chosen to give about ``TARGET_RED_BLOCKS`` blocks in all.
"""

from __future__ import annotations

import os
import sys

try:  # the authoritative switch once numba is imported
    from numba import config as _nb_config

    SIMULATOR = bool(getattr(_nb_config, "ENABLE_CUDASIM", 0))
except Exception:  # pragma: no cover
    SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"

WARP = 32
#: Most elements one thread accumulates dweight/dbias partials for in registers (group backward).
LOCAL_COLS = 32

if SIMULATOR:
    # The simulator runs each CUDA thread as a Python thread and its block manager polls them;
    # with the default 5 ms GIL switch interval every syncthreads costs milliseconds. Simulator
    # only: a shorter interval makes kernel launches several times faster.
    if sys.getswitchinterval() > 5e-4:
        sys.setswitchinterval(5e-4)
    #: threads of a block in warp-per-row mode (rows per block = ROW_BLOCK // 32)
    ROW_BLOCK = 64
    #: rows longer than this get a whole block each
    SHORT_ROW_MAX = 96
    #: threads per row in block-per-row mode, by row length
    LONG_ROW_THREADS = ((1 << 62, 64),)
    #: at most this many blocks in a row-kernel grid (rows are strided)
    MAX_ROW_BLOCKS = 3
    FUSED_THREADS = 1 << 20
    ELT_BLOCK = 32
    MAX_ELT_BLOCKS = 3
    RED_BLOCK = 32
    MAX_SLABS = 2
    TARGET_RED_BLOCKS = 4
else:
    ROW_BLOCK = 256
    SHORT_ROW_MAX = 1024
    # at most 512 threads a block: Numba kernels in float64 can exceed the 64 registers a
    # thread that a 1024-thread block allows
    LONG_ROW_THREADS = ((4096, 256), (1 << 62, 512))
    MAX_ROW_BLOCKS = 132 * 8
    #: fused group backward: about one wave (132 SMs x 1024 threads), which bounds the
    #: per-row-group dweight/dbias partials to ~8 % of the traffic of the kernel
    FUSED_THREADS = 132 * 1024
    ELT_BLOCK = 256
    MAX_ELT_BLOCKS = 132 * 32
    RED_BLOCK = 256
    MAX_SLABS = 256
    TARGET_RED_BLOCKS = 132 * 8


def row_launch(rows: int, m: int, fused: bool = False) -> tuple[int, int, int, int]:
    """``(blocks, threads, tpr, niter)`` for a row kernel over ``rows`` rows of ``m`` elements.

    ``fused``: the group backward with per-row-group partials; fewer, longer-lived row groups.
    """
    if m <= SHORT_ROW_MAX:
        threads, tpr = ROW_BLOCK, WARP
    else:
        for limit, t in LONG_ROW_THREADS:
            if m <= limit:
                threads = tpr = t
                break
    gpb = threads // tpr
    cap = MAX_ROW_BLOCKS if not fused else max(1, min(MAX_ROW_BLOCKS, FUSED_THREADS // threads))
    blocks = max(1, min(-(-rows // gpb), cap))
    groups = blocks * gpb
    niter = -(-rows // groups)
    return blocks, threads, tpr, niter


def elt_launch(n: int) -> tuple[int, int]:
    return max(1, min(-(-n // ELT_BLOCK), MAX_ELT_BLOCKS)), ELT_BLOCK


def channel_elt_launch(n: int, length: int) -> tuple[tuple[int, int], int]:
    """Grid of the per-channel elementwise kernels: 2-D (l blocks, (n, c) rows) when rows are
    at least one block long (the kernels test ``L >= blockDim.x``), else 1-D over the elements."""
    if length >= ELT_BLOCK:
        gx = max(1, min(-(-length // ELT_BLOCK), MAX_ELT_BLOCKS))
        gy = max(1, min(n // length, MAX_ELT_BLOCKS // gx, 65535))
        return (gx, gy), ELT_BLOCK
    return (elt_launch(n)[0], 1), ELT_BLOCK


def slabs(c: int, m: int) -> int:
    """Number of blocks sharing one column (channel) of ``m`` elements in a two-stage reduction."""
    want = max(1, -(-TARGET_RED_BLOCKS // c))
    most = max(1, -(-m // (RED_BLOCK * 4)))
    return max(1, min(want, most, MAX_SLABS))

