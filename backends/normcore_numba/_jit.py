"""How every kernel of this backend is compiled: one Python function, two machine-code variants.

``kernel(fn)`` compiles ``fn`` (a function whose outer loop is ``for b in prange(nblk)``, one
iteration per block of work) twice, with public ``numba.njit`` options only:

* ``parallel``: the ``prange`` loop runs its blocks on numba's threads;
* ``serial``: ``prange`` is ``range`` and the blocks run on the calling thread. A parallel
  region costs a few microseconds to start, more than a pass over a small input, and a serial
  function compiles in a fraction of a parallel one's time (a cold first call on a small input
  compiles only serial variants).

``Kernel.run(nblk, ...)`` calls ``fn(nblk, ...)`` and picks the variant from ``nblk`` (the plan,
``_plan.plan``, decides it; 1 means serial). Both variants run the same blocks in the same
order, so for one ``nblk`` their results are equal bit for bit.

Options (``FLAGS``): ``fastmath={"reassoc", "contract"}`` lets LLVM vectorize the float64 sums
(several lanes, added up in a fixed order: deterministic for one compiled kernel) and fuse
multiply-adds; no ``nnan``/``ninf``/``nsz``, so NaN and inf propagate as in the reference.
``error_model="numpy"``: division by zero gives inf/nan instead of raising. ``parallel`` is given
as a new dict per kernel (numba empties the dict it is given) with only ``prange`` on: the kernels
write no array expressions, and the other parfor passes only cost compile time.

The disk cache (``cache=True``): numba keys a cached kernel on its own source file's stamp and
its bytecode, not on the files of the functions it calls. Every ``@njit`` function a kernel
module compiles is defined in that module or in ``_shared.py``, the one file of helpers that
several kernel files use. An edit in a kernel module changes its stamp, and numba recompiles its
kernels. What lies outside those files goes into a hash that is part of every kernel's name
(``<name>_<variant>_<hash>``), which names numba's cache files: the options here and the source
of ``_shared.py``, so changing either recompiles every kernel (reading and hashing that file
costs about 50 us at import). numba drops its cache on its own upgrades (the index records
numba's version). tests/test_numba_cache.py checks all three.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import types
from typing import Any

from numba import njit

FLAGS: dict[str, Any] = {"cache": True, "nogil": True, "error_model": "numpy",
                         "fastmath": {"reassoc", "contract"}}


def _parallel_options() -> dict[str, bool]:
    return {"prange": True, "comprehension": False, "reduction": False, "inplace_binop": False,
            "setitem": False, "numpy": False, "stencil": False, "fusion": False}


def _canonical(value: Any) -> Any:
    """A value with its sets sorted: the options' hash must not depend on set order (string
    hashes, hence set order, change from process to process)."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    return value


_SHARED = pathlib.Path(__file__).with_name("_shared.py")
TAG = hashlib.sha256(json.dumps(_canonical({"flags": FLAGS, "parallel": _parallel_options()}),
                                sort_keys=True).encode() + _SHARED.read_bytes()).hexdigest()[:8]


def _renamed(fn: Any, variant: str) -> Any:
    """A copy of ``fn`` under its own qualified name (numba names its cache files after it)."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    copy.__qualname__ = f"{fn.__qualname__}_{variant}_{TAG}"
    copy.__doc__ = fn.__doc__
    copy.__module__ = fn.__module__
    return copy


class Kernel:
    """A kernel's two variants; calling it runs the parallel one when ``nblk`` > 1."""

    __slots__ = ("parallel", "serial", "__name__", "__dict__")

    def __init__(self, fn: Any) -> None:
        self.parallel = njit(parallel=_parallel_options(), **FLAGS)(_renamed(fn, "par"))
        self.serial = njit(**FLAGS)(_renamed(fn, "ser"))
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def run(self, nblk: int, *args: Any) -> Any:
        return (self.parallel if nblk > 1 else self.serial)(nblk, *args)


def kernel(fn: Any) -> Kernel:
    """Decorator: compile ``fn(nblk, ...)`` as a serial and a parallel kernel (see above)."""
    return Kernel(fn)


def inline(fn: Any) -> Any:
    """Decorator for the small serial helpers (per-channel finishing, index arithmetic): inlined
    at numba's IR level, so they are not compiled as functions of their own (each costs its own
    typing and LLVM pass: part of a cold first call)."""
    return njit(inline="always", **FLAGS)(_renamed(fn, "in"))


def helper(fn: Any) -> Any:
    """Decorator for the functions a kernel calls (same options, named with the options' hash;
    LLVM inlines them. numba's own ``inline="always"`` compiled faster but ran some kernels
    slower: BatchNorm1d (256, 64) forward 10.7 -> 18.7 us)."""
    return njit(**FLAGS)(_renamed(fn, "fn"))
