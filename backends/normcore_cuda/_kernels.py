"""CUDA kernels of the numba-cuda backend (imported lazily by :mod:`normcore_cuda.backend`).

All kernels take flat, C-contiguous 1-D arrays plus the dimensions of the canonical view.

Design (the way fast GPU normalization layers do it):

* Row kernels (group view rows of ``M = D*L`` elements, weight-standardization rows) assign a
  *row group* of ``tpr`` threads to a row: one warp per row when rows are short (a block then
  holds several rows), one whole block per row when rows are long. A fixed grid of row groups
  strides over the rows. Statistics are two-pass over the row (mean about the row's first
  element, then centred squares), the
  per-thread partials are merged by a butterfly warp shuffle (``cuda.shfl_xor_sync``) and, in
  block mode, a second warp-shuffle stage over one value per warp kept in shared memory. The
  output pass folds rstd and weight into one scale per element: ``y = (x - mean) * scale + bias``
  (subtracting the mean first keeps float32 exact for inputs with a large mean).
* Accumulation is in float64 for float32/float64 input and float32 for float16 input ("acc");
  the kernels are built once per accumulator type by :func:`get`.
* Channel statistics (BatchNorm, view ``(N, C, L)``) are a two-stage column reduction: stage 1 is
  a grid of ``(C, S)`` blocks, each reducing one slab of the ``N*L`` elements of a channel into a
  per-block partial (shifted sum and shifted sum of squares, shift = the channel's first element,
  in acc precision); stage 2 merges the ``S`` partials of a channel in a fixed order. No atomics,
  no full-size temporaries, deterministic.
* Backward kernels: the group backward kernel computes dx and, for LayerNorm-like views
  (``L == 1``), per-row-group partial dweight/dbias kept in a small per-thread local array,
  written once per row group and finished by a column-sum kernel. Otherwise dweight/dbias come
  from a two-stage column reduction like the channel statistics.
* Dropout evaluates the splitmix64 hash in uint64 arithmetic in the kernel.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) ``cuda.shfl_xor_sync`` does not exist, so
the row-group reduction is emulated with a shared buffer and ``syncthreads``, evaluating the same
butterflies in the same precision (every kernel calls its reductions uniformly from all threads
of a block, which this emulation requires), and the launch configuration uses small blocks so
the Python-threaded simulator stays fast. ``tests/test_cuda_lowering.py`` checks in CI, without
a GPU, that the GPU code (not run by the simulator) types and lowers for the CUDA target.

Layout (this module is the backend's one entry point and re-exports what it uses):

* :mod:`._launch`: ``SIMULATOR`` and the launch configuration (block/grid tables, ``row_launch``,
  ``elt_launch``, ``channel_elt_launch``, ``slabs``).
* :mod:`._reduce`: the device helpers every family shares: the row-group sums ``_group_sum`` /
  ``_group_sum2`` (warp shuffle, block stage, and their simulator emulations) and the shift of the
  shifted sums (``shift_sample``).
* Kernel families, each a ``build(acc_t)`` factory returning its kernels by name:
  :mod:`._group` (group view: forward, backward, dweight/dbias), :mod:`._rows` (weight
  standardization), :mod:`._channel` (channel view; also the accumulator-independent
  ``running_update_kernel``). :mod:`._dropout` holds the dropout kernel.

Each kernel's docstring says what a thread or block does, how it reduces, and what it reads and
writes (global-memory traffic in elements; for an ``n``-element tensor the floor is one read of
the inputs and one write of the output).
"""

from __future__ import annotations

import numpy as np

from . import _channel, _group, _rows
from ._channel import running_update_kernel
from ._dropout import dropout_kernel
from ._launch import (
    ELT_BLOCK,
    FUSED_THREADS,
    LOCAL_COLS,
    LONG_ROW_THREADS,
    MAX_ELT_BLOCKS,
    MAX_ROW_BLOCKS,
    MAX_SLABS,
    RED_BLOCK,
    ROW_BLOCK,
    SHORT_ROW_MAX,
    SIMULATOR,
    TARGET_RED_BLOCKS,
    WARP,
    channel_elt_launch,
    elt_launch,
    row_launch,
    slabs,
)
from ._reduce import FULL_MASK, SIM_SHUFFLE

__all__ = [
    "ELT_BLOCK", "FULL_MASK", "FUSED_THREADS", "LOCAL_COLS", "LONG_ROW_THREADS", "MAX_ELT_BLOCKS",
    "MAX_ROW_BLOCKS", "MAX_SLABS", "RED_BLOCK", "ROW_BLOCK", "SHORT_ROW_MAX", "SIMULATOR",
    "SIM_SHUFFLE", "TARGET_RED_BLOCKS", "WARP", "channel_elt_launch", "dropout_kernel",
    "elt_launch", "get", "row_launch", "running_update_kernel", "slabs",
]

#: The kernel families built per accumulator type, in the order their names are merged.
_FAMILIES = (_group.build, _rows.build, _channel.build)

_CACHE: dict = {}


class _Kernels:
    """The kernels of one accumulator type, as attributes (``get(acc).group_forward``, ...)."""


def get(acc) -> _Kernels:
    """The kernels accumulating in ``acc`` (``np.float32`` or ``np.float64``), built once."""
    acc = np.dtype(acc).type
    if acc not in _CACHE:
        _CACHE[acc] = _build(acc)
    return _CACHE[acc]


def _build(acc_t) -> _Kernels:
    k = _Kernels()
    for family in _FAMILIES:
        for name, kern in family(acc_t).items():
            assert not hasattr(k, name), name
            setattr(k, name, kern)
    return k
