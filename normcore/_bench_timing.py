"""Timing machinery and the environment of ``normcore bench`` (see :mod:`normcore.bench`).

Timers run round-robin (``run_rounds``) so that every column of a case sees the same machine
state; the copy timers give the floor a layer is compared with.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import importlib.util
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Seconds of timed work to aim for per timer in a case: a case whose round is slow (the NumPy
#: reference on big shapes) gets fewer rounds (never fewer than ``_MIN_REPEATS``), fast ones up
#: to ``repeat``.
_TIME_BUDGET = 0.4
_MIN_REPEATS = 3


# ---------------------------------------------------------------------- environment
def distribution_version(name: str) -> str | None:
    """Installed version of a distribution, without importing it (None when absent)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cupy_version() -> str | None:
    """Version of whichever CuPy wheel (cupy, cupy-cuda12x, ...) is installed, without importing it."""
    for dist in metadata.packages_distributions().get("cupy", []):
        version = distribution_version(dist)
        if version:
            return f"{version} ({dist})"
    return None


def thread_count() -> int:
    """Threads the CPU backends use: Numba's thread count when Numba is installed, else the cores."""
    if importlib.util.find_spec("numba") is not None:
        try:
            import numba

            return int(numba.get_num_threads())
        except Exception:  # a broken numba install must not break the benchmark
            pass
    return os.cpu_count() or 1


def threading_layer() -> str | None:
    """Numba's threading layer (``omp``, ``tbb`` or ``workqueue``), started if it was not; None
    without Numba. It decides whether the numba backend's kernels may run from several Python
    threads at once and in forked children (docs/backends.md, Threads)."""
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        import numba

        numba.get_num_threads()  # starts the layer
        return str(numba.threading_layer())
    except Exception:  # a broken numba install must not break the benchmark
        return None


def torch_available() -> bool:
    """Whether torch is installed (not imported)."""
    return importlib.util.find_spec("torch") is not None


def environment() -> dict[str, Any]:
    """Versions, threads and the machine, recorded with every report."""
    from . import __version__

    return {
        "normcore": __version__, "python": platform.python_version(),
        "numpy": np.__version__, "numba": distribution_version("numba"),
        "torch": distribution_version("torch"), "threads": thread_count(),
        "onnxruntime": distribution_version("onnxruntime"), "jax": distribution_version("jax"),
        "numba_threading_layer": threading_layer(),
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------------- timers
@dataclass
class Timer:
    """One thing timed round-robin with the others: ``fn`` after an untimed ``setup``."""

    fn: Callable[[], Any]
    setup: Callable[[], Any] | None = None
    calls: int = 1  # timed calls per round; the round keeps the fastest
    rounds: list[float] = field(default_factory=list)  # seconds, one per round
    #: Waits for the work ``fn`` queued (a backend's ``synchronize``): asynchronous backends
    #: (GPU, JAX) return before their kernels finish, and an unsynchronized time is a launch's.
    sync: Callable[[], Any] = lambda: None

    def once(self) -> float:
        if self.setup is not None:
            self.setup()
            self.sync()
        t0 = time.perf_counter()
        self.fn()
        self.sync()
        return time.perf_counter() - t0

    def round(self) -> None:
        self.rounds.append(min(self.once() for _ in range(self.calls)))


def device_copy_timer(x: Any) -> Timer:
    """A device-to-device copy of ``x`` (CuPy arrays or CUDA array interface)."""
    import cupy

    src = cupy.asarray(x)
    dst = cupy.empty_like(src)
    cupy.copyto(dst, src)
    return Timer(lambda: cupy.copyto(dst, src), sync=cupy.cuda.runtime.deviceSynchronize)


def alloc_timer(x: np.ndarray) -> Timer:
    """``x.copy()``: a fresh array each call, page faults included; the floor of any kernel that
    returns a new array (the former tools/perf_check.py's "+alloc" column; in the JSON as alloc_ms)."""
    return Timer(lambda: x.copy())


_copy_kernel: Any = None


def _numba_copy() -> Any:
    global _copy_kernel
    if _copy_kernel is None:
        import numba

        @numba.njit(parallel=True, cache=False)
        def copy(dst, src):  # pragma: no cover - compiled
            for i in numba.prange(src.size):
                dst[i] = src[i]

        _copy_kernel = copy
    return _copy_kernel


def copy_timers(x: np.ndarray) -> list[Timer]:
    """``np.copyto`` and, with Numba, a parallel loop on Numba's threads: each round's copy time
    is the faster of the two. (LLVM turns the loop into ``memcpy`` per thread, and glibc picks
    string moves or cache-bypassing stores by size. Measured here, a plain vectorized map over
    the same cache-sized array takes about 1.7x this copy's time, so on cache-sized arrays the
    copy is a floor no layer reaches; on large ones the layers' streaming stores come close.)"""
    dst = np.empty_like(x)
    timers = [Timer(lambda: np.copyto(dst, x))]
    if importlib.util.find_spec("numba") is not None:
        with contextlib.suppress(Exception):
            kernel = _numba_copy()
            flat_src, flat_dst = x.reshape(-1), dst.reshape(-1)
            kernel(flat_dst, flat_src)  # compile
            timers.append(Timer(lambda: kernel(flat_dst, flat_src)))
    return timers


# ---------------------------------------------------------------------- rounds
@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_rounds(timers: dict[str, dict[str, Timer]], copies: list[Timer], repeat: int,
               errors: dict[str, str]) -> None:
    """Time every timer round-robin so that every column sees the same machine state (on a
    shared host memory bandwidth drifts by 2x within a minute: timing one column after another
    turns that drift into false ratios). A column that raises is moved to ``errors``."""
    everything = copies + [t for group in timers.values() for t in group.values()]
    if not everything:
        return
    firsts = []
    for t in everything:  # one call each, not reported: sizes the rounds
        first = t.once()
        # the best of a few calls per round (about 10 ms of them, 3 to 200) for all but the
        # slowest: the first calls after another column's pay for the state that one left
        # (its cache and writeback traffic, and its OpenMP workers, which spin for a while after
        # its call on the cores the next column wants). Measured (2 threads), GroupNorm's first
        # call after torch's is 30% slower and its third steady; BatchNorm2d (256, 64, 8, 8), a
        # 90 us call, runs 190, 127, 105, then about 95 us until 2 ms after torch's last call,
        # and reaches its steady 87.5 only after 5 ms (libgomp's spin time): 20 calls (2 ms)
        # kept 8% of torch's state in its figure.
        t.calls = min(200, max(3, math.ceil(10e-3 / max(first, 1e-9)))) if first < 0.1 else 1
        firsts.append(first * t.calls)
    budget = _TIME_BUDGET * len(everything)
    rounds = max(_MIN_REPEATS, min(repeat, int(budget / max(sum(firsts), 1e-6))))
    for r in range(rounds):
        for t in copies:
            t.round()
        order = list(timers)
        first = r % len(order) if order else 0
        for col in order[first:] + order[:first]:  # each column in turn goes first
            try:
                for t in timers[col].values():
                    t.round()
            except Exception as exc:  # one failing column must not end the benchmark
                errors[col] = f"{type(exc).__name__}: {exc}"
                del timers[col]


def median_ratio(num: Sequence[float], den: Sequence[float], same_rounds: bool = True) -> float:
    """Median over rounds of num/den when both were measured in the same rounds, else the ratio
    of their medians."""
    if not same_rounds:
        return statistics.median(num) / statistics.median(den)
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


