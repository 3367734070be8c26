"""Recycled output buffers, so that a layer's steady state does not pay the kernel's page faults.

Why: a fresh large ``np.empty`` is memory the kernel must fault in and zero on first touch. For
outputs above glibc's mmap threshold (32 MiB at most) every call gets new pages: a 32 MiB output
costs about 2 ms of page faults on top of a ~1.5 ms LayerNorm, which puts any kernel far from
the memory-copy floor. A training or inference loop drops each output before the next call of the
same shape, so the same bytes can be handed out again, as PyTorch's caching allocators do.

Where: pooled outputs start on a 64-byte line; ``empty(shape, dtype, like=x)`` starts one at
``x``'s offset within a line instead (buffers carry a line of slack, so any offset fits).

How: every pooled output is a view of a byte buffer that the pool keeps. NumPy views, memoryviews
and arrays made from them (``torch.from_numpy`` too) all hold a reference to that buffer, so the
buffer is free exactly when the pool's reference is the only one left (CPython reference
counts, read under a lock). Only outputs of at least ``MIN_BYTES`` are pooled (below that malloc
already reuses warm heap memory), and idle plus live pooled bytes stay under a limit: the
smaller of 1 GiB and an eighth of physical memory, or ``NORMCORE_NUMBA_POOL_MB`` (0 disables
the pool). Interpreters without reliable reference counts (PyPy, free-threaded CPython) never
pool. ``empty_cache()`` hands every idle buffer back to the allocator.

Fork: a child gets a new lock (another thread of the parent may have held the old one at the
fork, and nothing in the child would ever release it) and recounts its pooled bytes from the
buffers it holds (that thread may have been halfway through adding or dropping one).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
import weakref

import numpy as np

from normcore.config import env_float

MIN_BYTES = 1 << 20
_ALIGN = 64


#: The largest NORMCORE_NUMBA_POOL_MB: 2**44 MiB is the whole 64-bit address space.
MAX_MB = float(1 << 44)


def _default_limit() -> int:
    """Bytes: NORMCORE_NUMBA_POOL_MB (a number of MiB from 0 to MAX_MB; anything else warns and
    is ignored), else the smaller of 1 GiB and an eighth of physical memory."""
    limit = 1 << 30
    try:
        limit = min(limit, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8)
    except (AttributeError, ValueError, OSError):
        pass
    mb = env_float("NORMCORE_NUMBA_POOL_MB", limit / (1 << 20), maximum=MAX_MB)
    return int(mb * (1 << 20))


def _refcounts_reliable() -> bool:
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return sys.implementation.name == "cpython" and gil


class _Slot:
    """One pooled byte buffer: the array that owns the memory (every view's ``base`` is this
    array, so its reference count says whether a view is alive) and its address."""

    __slots__ = ("raw", "address")

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = raw
        self.address = raw.ctypes.data


class Pool:
    """Byte buffers keyed by size; see the module docstring."""

    def __init__(self, limit: int) -> None:
        self.limit = limit if _refcounts_reliable() else 0
        self._lock = threading.Lock()
        self._buckets: dict[int, list[_Slot]] = {}
        self._bytes = 0
        # What sys.getrefcount reports for a buffer only the pool holds, measured with the same
        # expression as in _idle (the count of temporaries differs between Python versions).
        probe = _Slot(np.empty(1, np.uint8))
        self._idle_count = -1
        self._idle_count = sys.getrefcount(probe.raw)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=functools.partial(_after_fork, weakref.ref(self)))

    def _after_fork_in_child(self) -> None:
        """A new lock and a recount (see the module docstring)."""
        self._lock = threading.Lock()
        self._bytes = sum(size * len(bucket) for size, bucket in self._buckets.items())

    def _idle(self, slot: _Slot) -> bool:
        return sys.getrefcount(slot.raw) == self._idle_count

    def empty(self, shape: tuple[int, ...], dtype: np.dtype,
              like: np.ndarray | None = None) -> np.ndarray:
        """An uninitialised C-contiguous array, recycled when a same-sized idle buffer exists;
        pooled ones start at ``like``'s offset within a 64-byte line (64-byte aligned without
        ``like``, or when that offset is not a multiple of the itemsize)."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < MIN_BYTES or nbytes > self.limit:
            return np.empty(shape, dtype)
        offset = 0 if like is None else like.ctypes.data % _ALIGN
        if offset % dtype.itemsize:
            offset = 0
        with self._lock:
            # the view is made under the lock: from then on it holds a reference to the buffer
            slot = self._take(nbytes)
            if slot is None:
                return np.empty(shape, dtype)
            start = (offset - slot.address) % _ALIGN
            return slot.raw[start:start + nbytes].view(dtype).reshape(shape)

    def empty_like(self, x: np.ndarray) -> np.ndarray:
        """``empty(x.shape, x.dtype)``: C-contiguous whatever x's strides (unlike
        ``np.empty_like``); an output below MIN_BYTES comes straight from ``np.empty``, without
        the pool's bookkeeping (half a microsecond of a small layer's call)."""
        if x.nbytes < MIN_BYTES:
            return np.empty(x.shape, x.dtype)
        return self.empty(x.shape, x.dtype)

    def _take(self, nbytes: int) -> _Slot | None:
        bucket = self._buckets.setdefault(nbytes, [])
        for slot in bucket:
            if self._idle(slot):
                return slot
        if self._bytes + nbytes > self.limit:
            self._evict(self._bytes + nbytes - self.limit)
            if self._bytes + nbytes > self.limit:
                return None
        slot = _Slot(np.empty(nbytes + _ALIGN, np.uint8))
        bucket.append(slot)
        self._bytes += nbytes
        return slot

    def _evict(self, need: int) -> None:
        """Drop idle buffers until ``need`` bytes are released (or none is idle)."""
        for size, bucket in self._buckets.items():
            keep = []
            for slot in bucket:
                if need > 0 and self._idle(slot):
                    need -= size
                    self._bytes -= size
                else:
                    keep.append(slot)
            bucket[:] = keep

    def empty_cache(self) -> int:
        """Release every idle buffer; return the bytes released."""
        with self._lock:
            before = self._bytes
            self._evict(before)
            return before - self._bytes

    @property
    def pooled_bytes(self) -> int:
        """Bytes the pool holds, idle and in use."""
        return self._bytes


def _after_fork(ref: weakref.ref) -> None:
    pool = ref()
    if pool is not None:
        pool._after_fork_in_child()


POOL = Pool(_default_limit())
empty = POOL.empty
empty_like = POOL.empty_like
empty_cache = POOL.empty_cache
