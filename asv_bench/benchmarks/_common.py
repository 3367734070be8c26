"""Shared machinery of the normcore asv suite.

Parameter grids are computed when asv imports a benchmark module: once for discovery and again in
every benchmark process (asv passes a parameter *index*). They must come out identical in both, so
they depend only on the installed plugins and on ``NORMCORE_ASV_QUICK`` (both fixed for the run):

* backends: every backend the registry discovers (``normcore.registry.backend_names()``: the
  names ``normcore.list_backends()`` reports, read from entry points without importing any
  backend, so it is cheap and does not depend on whether a backend loads), united with the
  backends normcore ships so that a commit predating one (history runs) sees the same grid and
  skips the case; ``NORMCORE_ASV_BACKENDS=numpy,numba`` overrides the list;
* shapes: the realistic set, or only the quick set with ``NORMCORE_ASV_QUICK=1``;
* dtypes: float32 everywhere, float64 only on the quick shapes (other cases are skipped).

A case that cannot run here (backend unavailable or absent at this commit, layer absent at this
commit, float64 on a large shape) raises NotImplementedError in ``setup``: asv records it as
skipped (n/a), not failed. Any other exception is a real failure.

asv_runner re-runs ``setup`` before every timed call, so ``setup`` only looks its state up in a
module-level cache; the expensive part (building inputs, JIT compilation, GPU warm-up) happens
once per process, on the first ``setup``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import normcore

#: Backends normcore ships; kept in the grid even when a commit under test lacks one.
SHIPPED_BACKENDS = ("numba", "numba-cuda", "numpy")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


#: ``NORMCORE_ASV_QUICK=1``: only the small shapes (seconds per case; CI and history runs).
QUICK = _flag("NORMCORE_ASV_QUICK")


def _discover_backends() -> list[str]:
    override = os.environ.get("NORMCORE_ASV_BACKENDS", "").strip()
    if override:
        return [n.strip() for n in override.split(",") if n.strip()]
    names = set(SHIPPED_BACKENDS)
    registry = getattr(normcore, "registry", None)
    names_only = getattr(registry, "backend_names", None)
    try:
        if names_only is not None:
            # The registry's entry-point names, the same rows list_backends() reports, without
            # importing any backend: every benchmark process computes this grid again, so it
            # must be cheap and must not depend on whether a backend loads.
            names.update(names_only())
        elif hasattr(normcore, "list_backends"):
            names.update(row.name for row in normcore.list_backends())
    except Exception:  # a broken registry must not hide the suite; setup will report it
        pass
    return sorted(names)


#: Every backend the registry knows of (plus the shipped ones), discovered at import time.
BACKENDS = _discover_backends()
DTYPES = ["float32", "float64"]


def shapes(full: list[tuple[int, ...]], quick: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The shape grid of one layer: the quick set alone in quick mode, else realistic + quick."""
    return list(quick) if QUICK else list(full) + list(quick)


def skip(reason: str) -> None:
    """Mark the current case as not applicable (asv shows it as n/a)."""
    raise NotImplementedError(reason)


def get_backend(name: str) -> Any:
    """The backend, or a skip when it is absent, broken or unavailable here (no GPU...)."""
    getter = getattr(normcore, "get_backend", None)
    if getter is None:
        skip("normcore at this commit has no backend registry")
    try:
        return getter(name)
    except Exception as exc:  # BackendError: unknown, broken or unavailable on this machine
        skip(f"backend {name!r} cannot run here: {exc}")


def check_case(shape: tuple[int, ...], dtype: str, quick_shapes: list[tuple[int, ...]]) -> None:
    """float64 is benchmarked on the quick shapes only."""
    if dtype != "float32" and tuple(shape) not in [tuple(s) for s in quick_shapes]:
        skip(f"{dtype} is benchmarked on the quick shapes only")


def layer_class(name: str) -> Any:
    cls = getattr(normcore, name, None)
    if cls is None:
        skip(f"normcore at this commit has no {name}")
    return cls


def make_sync(backend: Any) -> Callable[[], None]:
    """A function that waits for the backend's queued work (a no-op on synchronous backends).

    GPU kernels (and JAX's) launch asynchronously: a timed call that does not synchronize
    measures only the launch. Backends of contract version 2 say how to wait
    (``synchronize()``); at older commits GPU backends fall back to CuPy's or Numba's.
    """
    sync = getattr(backend, "synchronize", None)
    if sync is not None:
        return sync
    if getattr(backend, "device", "cpu") == "cpu":
        return _nothing
    try:
        import cupy

        device = cupy.cuda.Device()
        return device.synchronize
    except Exception:
        from numba import cuda

        return cuda.synchronize


def _nothing() -> None:
    return None


def random(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    """Standard-normal host data of ``dtype``, generated without a float64 temporary."""
    return np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.dtype(dtype))


def arm_backward(layer: Any, saved: Any) -> None:
    """Put back the forward state that ``layer.backward`` consumes, so backward can be timed
    repeatedly without a forward in between (relies on ``Module._saved``)."""
    layer._saved = saved
    layer.zero_grad()


def best_time(fn: Callable[[], Any], sync: Callable[[], None], min_runs: int = 3,
              min_time: float = 0.2, max_runs: int = 50) -> float:
    """Best wall time of ``fn`` (synchronized), over at least ``min_runs`` runs and ``min_time``."""
    best = float("inf")
    runs, start = 0, time.perf_counter()
    while runs < max_runs and (runs < (1 if QUICK else min_runs)
                               or (not QUICK and time.perf_counter() - start < min_time)):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


_copy_bandwidth: float | None = None


def copy_bandwidth(nbytes: int) -> float:
    """Bytes per second of a host ``np.copyto`` of ``nbytes`` (read + write counted), the roofline
    that an element-wise kernel on this machine can at best reach."""
    global _copy_bandwidth
    if _copy_bandwidth is None:
        n = max(nbytes // 8, 1 << 20)
        src = np.ones(n, dtype=np.float64)
        dst = np.empty_like(src)
        t = best_time(lambda: np.copyto(dst, src), _nothing, min_runs=5)
        _copy_bandwidth = 2 * src.nbytes / t
    return _copy_bandwidth
