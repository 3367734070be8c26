"""numba's threading layer as the numba backend uses it.

* **Started once per process, before the first kernel runs or is loaded from the disk cache.**
  numba starts the layer when it loads a parallel kernel from the disk cache only if the kernel
  was saved with numba's hook for it, and a kernel compiled in a process that had loaded a
  parallel callee from the cache was saved without it (numba does not carry a cached library's
  hooks over to the code that links it: numba issue #8578, reproduced with numba 0.68.1; numba
  PR #9950 proposes a fix). With the earlier backend's shared block runner, a LayerNorm script,
  then a BatchNorm2d script twice on a small input, each in a fresh process, and the third died
  of a segmentation fault (tests/test_numba_cache.py keeps that sequence). Each kernel is now
  parallel itself, but serial variants run first on small inputs; starting the layer first
  costs nothing and keeps every order safe.
* **One kernel at a time where the layer is not threadsafe.** numba falls back to its
  ``workqueue`` layer where neither OpenMP nor TBB can be loaded, and that layer aborts the
  process when two Python threads run parallel regions at once ("Concurrent access has been
  detected"). There the backend's kernels run behind a lock; ``omp`` and ``tbb`` run them side by
  side.
* **One thread in a child forked after GNU OpenMP started.** GNU OpenMP does not survive
  ``fork``, and numba ends such a child at its first parallel region ("fork() called from a
  process already using GNU OpenMP, this is unsafe"): a pre-forking server that warmed a layer up
  before forking lost every worker. In such a child every kernel runs on the calling thread (the
  same code as for small inputs, see ``backend._plan``), and the first call says so with a
  warning.
* **New locks in every forked child.** A fork copies the locks but only the forking thread: a
  lock another thread held at the fork (``_one_at_a_time`` while that thread ran a kernel under
  ``workqueue``, ``_state_lock`` while it started the layer) stays held in the child, by nobody,
  and the child's first kernel waited for it forever. The child makes both anew
  (``os.register_at_fork``, whichever the layer). numba's own locks are numba's: see the threads
  section of docs/backends.md.

How: ``guard`` wraps the backend's kernel methods so that the first call settles all this, then
puts the class's own methods back when nothing is left to guard (no cost per call from then on;
the wrappers stay only under ``workqueue``, for the lock, and come back in a forked child for
its first call).
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any

_state_lock = threading.Lock()
_settled = False  # nothing left to do before a kernel runs
_started = False  # the layer is up in this process
_forked = False  # a child forked after GNU OpenMP started, not told yet
_gnu_omp = False  # the layer that started is GNU OpenMP's (children run on one thread)
#: Held around every kernel call when the layer is not threadsafe; reentrant (a kernel method
#: may call another).
_one_at_a_time: threading.RLock | None = None
_guarded: list[tuple[type, dict[str, Any]]] = []  # (class, its kernel methods as written)
_fork_hooks: list[Callable[[], None]] = []


def guard(cls: type, names: Iterable[str], in_forked_child: Callable[[], None]) -> None:
    """Wrap ``cls``'s kernel methods ``names`` (see the module docstring); ``in_forked_child``
    runs in a child forked after GNU OpenMP started, before its first kernel."""
    originals = {name: getattr(cls, name) for name in names}
    _guarded.append((cls, originals))
    _fork_hooks.append(in_forked_child)
    _wrap(cls, originals)


def _wrap(cls: type, originals: dict[str, Any]) -> None:
    for name, method in originals.items():
        setattr(cls, name, _settling(method))


def _settling(method: Any) -> Any:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _settled:
            settle()
        lock = _one_at_a_time
        if lock is None:
            return method(self, *args, **kwargs)
        with lock:
            return method(self, *args, **kwargs)

    return call


def settle() -> None:
    """Start the layer if it is not up, tell a forked child once, and unwrap the kernel methods
    when no lock is needed. Idempotent; ``backend._kernels`` calls it too, before it imports
    a kernel module, for code that reaches the kernels without the backend's methods."""
    global _settled, _started, _forked, _one_at_a_time, _gnu_omp
    with _state_lock:
        if _settled:
            return
        if not _started:
            import numba

            numba.get_num_threads()  # starts the layer (numba's own public path)
            layer = numba.threading_layer()
            if layer == "workqueue":
                _one_at_a_time = threading.RLock()
            if layer == "omp":
                _gnu_omp = _gnu_openmp_loaded()  # not fork-safe
            _started = True
        if _forked:
            _forked = False
            warnings.warn("normcore: this process was forked after numba's GNU OpenMP threading "
                          "layer had started in its parent; GNU OpenMP does not survive fork, so "
                          "the numba backend runs every kernel on one thread here. Start worker "
                          "processes before the first normcore call, use the 'spawn' or "
                          "'forkserver' start method, or set NUMBA_THREADING_LAYER=tbb in the "
                          "parent for parallel kernels in children", RuntimeWarning, stacklevel=4)
        if _one_at_a_time is None:
            for cls, originals in _guarded:
                for name, method in originals.items():
                    setattr(cls, name, method)
        _settled = True


def _gnu_openmp_loaded(maps: str = "/proc/self/maps") -> bool:
    """Whether GNU OpenMP (libgomp) is loaded in this process, read from the loader's map (numba
    says which OpenMP its ``omp`` layer runs only through a private module). Where the map cannot
    be read (not Linux: numba's ``omp`` layer there is LLVM's or Intel's), False. torch's wheels
    bring a libgomp of their own: with torch loaded beside an Intel-OpenMP numba this says True,
    and forked children run on one thread, which is safe."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as fh:
            return "libgomp" in fh.read()
    except OSError:
        return False


def _after_fork_in_child() -> None:
    """In every forked child: new locks (a parent thread may have held either at the fork); after
    GNU OpenMP started, one thread from now on (see the module docstring)."""
    global _state_lock, _one_at_a_time, _settled, _forked
    _state_lock = threading.Lock()
    if _one_at_a_time is not None:
        _one_at_a_time = threading.RLock()
    if not _gnu_omp:
        return
    _settled = False
    _forked = True
    for hook in _fork_hooks:
        hook()
    for cls, originals in _guarded:
        _wrap(cls, originals)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
