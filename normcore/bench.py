"""Benchmark measurements: layers x shapes x dtypes x backends (and torch as a reference column).

This module measures; it prints nothing (``normcore bench`` in :mod:`normcore.cli` renders).
Every timing goes through the module API (``layer(x)``, ``layer.backward(dy)``) after warm-up
calls, so JIT compilation is excluded; the reported time is the median of the repeats. Memory
traffic is counted as 2x the bytes of x for a forward (read x, write y) and 3x for a backward
(read x and dy, write dx), and compared with the time of a plain copy of the same array.

>>> from normcore import bench
>>> cases = bench.default_cases(layers=["layernorm"], quick=True)
>>> report = bench.run(cases, ["numpy"], repeat=2, use_torch=False)
>>> sorted({r.pass_ for r in report.rows})
['backward', 'forward']
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import importlib.util
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import registry

__all__ = [
    "LAYERS", "BenchCase", "BenchRow", "BenchReport", "default_cases", "run", "thread_count",
    "distribution_version", "torch_available",
]

REFERENCE = registry.REFERENCE
TORCH = "torch"

#: Layer keys (``--layer``) -> display name. ``batchnorm2d-eval`` times the evaluation forward only.
LAYERS: dict[str, str] = {
    "batchnorm2d": "BatchNorm2d",
    "batchnorm2d-eval": "BatchNorm2d (eval)",
    "layernorm": "LayerNorm",
    "groupnorm": "GroupNorm(32)",
    "instancenorm2d": "InstanceNorm2d",
    "rmsnorm": "RMSNorm",
}

_DEFAULT_SHAPES: dict[str, list[tuple[int, ...]]] = {
    "batchnorm2d": [(32, 64, 56, 56), (8, 256, 28, 28), (256, 64, 8, 8)],
    "batchnorm2d-eval": [(32, 64, 56, 56)],
    "layernorm": [(8192, 1024), (12544, 768), (4096, 4096)],
    "groupnorm": [(16, 256, 32, 32)],
    "instancenorm2d": [(16, 64, 64, 64)],
    "rmsnorm": [(8192, 1024)],
}

_QUICK_SHAPES: dict[str, list[tuple[int, ...]]] = {
    "batchnorm2d": [(8, 16, 16, 16)],
    "batchnorm2d-eval": [(8, 16, 16, 16)],
    "layernorm": [(256, 256)],
    "groupnorm": [(4, 64, 8, 8)],
    "instancenorm2d": [(4, 16, 16, 16)],
    "rmsnorm": [(256, 256)],
}

#: Seconds of timed work to aim for per measurement: slow backends on big shapes get fewer
#: repeats (never fewer than ``_MIN_REPEATS``), fast ones up to ``repeat``.
_TIME_BUDGET = 0.4
_MIN_REPEATS = 3


@dataclass(frozen=True)
class BenchCase:
    """One layer on one input shape and dtype."""

    layer: str  # a key of LAYERS
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def label(self) -> str:
        return f"{LAYERS[self.layer]} {'x'.join(map(str, self.shape))} {self.dtype}"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def passes(self) -> tuple[str, ...]:
        return ("forward",) if self.layer.endswith("-eval") else ("forward", "backward")


@dataclass
class BenchRow:
    """One measured (case, backend, pass). Times in milliseconds; None where not measured."""

    layer: str
    shape: tuple[int, ...]
    dtype: str
    backend: str
    pass_: str
    ms: float | None = None
    gbs: float | None = None
    copy_fraction: float | None = None
    speedup_reference: float | None = None
    speedup_torch: float | None = None
    repeats: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        d["shape"] = list(self.shape)
        return d


@dataclass
class BenchReport:
    """Every row plus the environment the numbers were taken in."""

    rows: list[BenchRow] = field(default_factory=list)
    copy_ms: dict[str, float] = field(default_factory=dict)  # case label -> copy time
    environment: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "copy_ms": self.copy_ms,
                "rows": [r.as_dict() for r in self.rows]}


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


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def environment() -> dict[str, Any]:
    from . import __version__

    return {
        "normcore": __version__, "python": platform.python_version(),
        "numpy": np.__version__, "numba": distribution_version("numba"),
        "torch": distribution_version("torch"), "threads": thread_count(),
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------------- cases
def default_cases(layers: Sequence[str] | None = None, dtypes: Sequence[str] = ("float32",),
                  quick: bool = False) -> list[BenchCase]:
    """The default grid (or the small ``quick`` one), restricted to ``layers`` keys if given."""
    table = _QUICK_SHAPES if quick else _DEFAULT_SHAPES
    keys = list(LAYERS) if not layers else [normalize_layer(k) for k in layers]
    return [BenchCase(k, s, np.dtype(d).name) for k in keys for s in table[k] for d in dtypes]


def normalize_layer(name: str) -> str:
    """Accept ``BatchNorm2d``, ``batchnorm2d``, ``GroupNorm``, ``bn-eval``-like spellings."""
    key = name.strip().lower().replace("_", "").replace(" ", "")
    key = {"groupnorm32": "groupnorm", "groupnorm(32)": "groupnorm", "batchnorm2deval":
           "batchnorm2d-eval", "batchnorm2d(eval)": "batchnorm2d-eval"}.get(key, key)
    if key not in LAYERS:
        raise ValueError(f"unknown layer {name!r}; choose from {', '.join(LAYERS)}")
    return key


def _make_layer(case: BenchCase, backend: str) -> Any:
    import normcore

    c, dt = case.shape[1] if len(case.shape) > 2 else case.shape[-1], np.dtype(case.dtype)
    kw = {"backend": backend, "dtype": dt}
    if case.layer.startswith("batchnorm2d"):
        layer = normcore.BatchNorm2d(c, **kw)
        return layer.eval() if case.layer.endswith("-eval") else layer
    if case.layer == "layernorm":
        return normcore.LayerNorm(case.shape[-1], **kw)
    if case.layer == "groupnorm":
        return normcore.GroupNorm(32, c, **kw)
    if case.layer == "instancenorm2d":
        return normcore.InstanceNorm2d(c, **kw)
    if case.layer == "rmsnorm":
        return normcore.RMSNorm(case.shape[-1], **kw)
    raise ValueError(case.layer)


def _make_torch_layer(case: BenchCase) -> Any:
    import torch

    c = case.shape[1] if len(case.shape) > 2 else case.shape[-1]
    dt = getattr(torch, case.dtype)
    if case.layer.startswith("batchnorm2d"):
        layer = torch.nn.BatchNorm2d(c, dtype=dt)
        return layer.eval() if case.layer.endswith("-eval") else layer
    if case.layer == "layernorm":
        return torch.nn.LayerNorm(case.shape[-1], dtype=dt)
    if case.layer == "groupnorm":
        return torch.nn.GroupNorm(32, c, dtype=dt)
    if case.layer == "instancenorm2d":
        return torch.nn.InstanceNorm2d(c, dtype=dt)
    if case.layer == "rmsnorm":
        return torch.nn.RMSNorm(case.shape[-1], dtype=dt)
    raise ValueError(case.layer)


# ---------------------------------------------------------------------- timing
def _sync(arr: Any) -> None:
    """Wait for device work behind ``arr`` (no-op for NumPy arrays)."""
    if isinstance(arr, np.ndarray) or arr is None:
        return
    if hasattr(arr, "__cuda_array_interface__"):
        with contextlib.suppress(Exception):
            import cupy

            cupy.cuda.runtime.deviceSynchronize()
            return
        with contextlib.suppress(Exception):
            from numba import cuda

            cuda.synchronize()


def _median_time(fn: Callable[[], Any], setup: Callable[[], Any] | None, repeat: int,
                 first: float) -> tuple[float, int]:
    """Median seconds of ``fn`` over an adaptive number of repeats (``setup`` runs untimed)."""
    n = max(_MIN_REPEATS, min(repeat, int(_TIME_BUDGET / max(first, 1e-6))))
    times = []
    for _ in range(n):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        _sync(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), n


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    _sync(fn())
    return time.perf_counter() - t0


def _measure_normcore(case: BenchCase, backend: str, x_host: np.ndarray, dy_host: np.ndarray,
                      repeat: int) -> dict[str, tuple[float, int]]:
    layer = _make_layer(case, backend)
    be = layer.backend
    x, dy = be.asarray(x_host), be.asarray(dy_host)
    out: dict[str, tuple[float, int]] = {}
    backward = "backward" in case.passes
    # Warm-up: compiles JIT kernels (twice, so caches and allocators settle).
    for _ in range(2):
        y = layer(x)
        _sync(y)
        if backward:
            _sync(layer.backward(dy))
    first = _timed(lambda: layer(x))
    out["forward"] = _median_time(lambda: layer(x), None, repeat, first)
    if backward:
        layer(x)
        first = _timed(lambda: layer.backward(dy))
        out["backward"] = _median_time(lambda: layer.backward(dy), lambda: _sync(layer(x)),
                                       repeat, first)
    if not isinstance(x, np.ndarray):  # a device backend: compare with a copy on its device
        with contextlib.suppress(Exception):
            out["copy"] = (_device_copy_time(x, repeat), 0)
    return out


def _device_copy_time(x: Any, repeat: int) -> float:
    """Fastest repeat of a device-to-device copy of ``x`` (CuPy arrays or CUDA array interface)."""
    import cupy

    src = cupy.asarray(x)
    dst = cupy.empty_like(src)
    cupy.copyto(dst, src)
    return min(_timed(lambda: (cupy.copyto(dst, src), dst)[1]) for _ in range(repeat))


def _measure_torch(case: BenchCase, x_host: np.ndarray, dy_host: np.ndarray,
                   repeat: int) -> dict[str, tuple[float, int]]:
    import torch

    layer = _make_torch_layer(case)
    backward = "backward" in case.passes
    x = torch.from_numpy(x_host).requires_grad_(backward)
    dy = torch.from_numpy(dy_host)
    params = [p for p in layer.parameters() if p.requires_grad]
    out: dict[str, tuple[float, int]] = {}
    state: dict[str, Any] = {}

    def forward() -> None:
        if backward:
            layer(x)
        else:
            with torch.no_grad():
                layer(x)

    def setup() -> None:
        state["y"] = layer(x)

    def grad() -> None:
        torch.autograd.grad(state["y"], [x, *params], dy)

    for _ in range(2):
        forward()
        if backward:
            setup()
            grad()
    out["forward"] = _median_time(forward, None, repeat, _timed(forward))
    if backward:
        setup()
        out["backward"] = _median_time(grad, setup, repeat, _timed(grad))
    return out


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


def copy_time(x: np.ndarray, repeat: int = 10) -> float:
    """Seconds to copy ``x`` once: the fastest repeat of the best of ``np.copyto`` and a parallel
    Numba loop (on Numba's thread count)."""
    dst = np.empty_like(x)
    best = []
    fns: list[Callable[[], Any]] = [lambda: np.copyto(dst, x)]
    if importlib.util.find_spec("numba") is not None:
        with contextlib.suppress(Exception):
            kernel = _numba_copy()
            flat_src, flat_dst = x.reshape(-1), dst.reshape(-1)
            kernel(flat_dst, flat_src)  # compile
            fns.append(lambda: kernel(flat_dst, flat_src))
    for fn in fns:
        fn()
        # The fastest repeat, not the median: this is the ceiling the layers are compared with.
        best.append(min(_timed(fn) for _ in range(repeat)))
    return min(best)


# ---------------------------------------------------------------------- the run
@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run(cases: Sequence[BenchCase], backends: Sequence[str], repeat: int = 10,
        use_torch: bool = True,
        progress: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every case on every backend (plus the numpy reference, and torch when importable).

    ``progress(description)`` is called once after each (case, column) measurement; the number of
    calls is ``len(cases) * len(columns(backends, use_torch))``.
    """
    cols = columns(backends, use_torch)
    report = BenchReport(environment=environment())
    threads = report.environment["threads"]
    rng = np.random.default_rng(0)
    with _torch_threads(threads) if TORCH in cols else contextlib.nullcontext():
        for case in cases:
            x = rng.standard_normal(case.shape, dtype=np.float64).astype(case.dtype)
            dy = rng.standard_normal(case.shape, dtype=np.float64).astype(case.dtype)
            copy_s = copy_time(x)
            report.copy_ms[case.label] = copy_s * 1e3
            copy_gbs = 2 * case.nbytes / copy_s / 1e9  # device backends bring their own
            timings: dict[str, dict[str, tuple[float, int]] | str] = {}
            for col in cols:
                try:
                    timings[col] = (_measure_torch(case, x, dy, repeat) if col == TORCH
                                    else _measure_normcore(case, col, x, dy, repeat))
                except Exception as exc:  # one failing column must not end the benchmark
                    timings[col] = f"{type(exc).__name__}: {exc}"
                if progress is not None:
                    progress(f"{case.label} on {col}")
            report.rows.extend(_rows(case, cols, timings, copy_gbs))
    return report


def columns(backends: Sequence[str], use_torch: bool = True) -> list[str]:
    """The measured columns: the reference first, then the named backends, then torch."""
    cols = [REFERENCE] + [b for b in dict.fromkeys(backends) if b != REFERENCE]
    if use_torch and torch_available():
        cols.append(TORCH)
    return cols


def _rows(case: BenchCase, cols: list[str], timings: dict[str, Any],
          copy_gbs: float) -> list[BenchRow]:
    rows = []
    for pass_ in case.passes:
        traffic = (2 if pass_ == "forward" else 3) * case.nbytes

        def ms_of(col: str, pass_: str = pass_) -> float | None:
            t = timings.get(col)
            return t[pass_][0] * 1e3 if isinstance(t, dict) and pass_ in t else None

        ref_ms, torch_ms = ms_of(REFERENCE), ms_of(TORCH)
        for col in cols:
            t = timings[col]
            row = BenchRow(LAYERS[case.layer], case.shape, case.dtype, col, pass_)
            if isinstance(t, str):
                row.error = t
            else:
                row.ms, row.repeats = t[pass_][0] * 1e3, t[pass_][1]
                row.gbs = traffic / (row.ms * 1e-3) / 1e9
                own_copy = t.get("copy")
                reference_gbs = 2 * case.nbytes / own_copy[0] / 1e9 if own_copy else copy_gbs
                row.copy_fraction = row.gbs / reference_gbs
                if ref_ms is not None:
                    row.speedup_reference = ref_ms / row.ms
                if torch_ms is not None:
                    row.speedup_torch = torch_ms / row.ms
            rows.append(row)
    return rows


def plot(report: BenchReport, path: str) -> None:
    """A grouped bar chart of GB/s per (case, pass), one bar per column. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'normcore[plot]'") from exc
    groups = list(dict.fromkeys((r.layer, r.shape, r.dtype, r.pass_) for r in report.rows))
    cols = list(dict.fromkeys(r.backend for r in report.rows))
    value = {(r.layer, r.shape, r.dtype, r.pass_, r.backend): r.gbs or 0.0 for r in report.rows}
    width = 0.8 / max(1, len(cols))
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(groups)), 5))
    for j, col in enumerate(cols):
        xs = [i + (j - (len(cols) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [value.get((*g, col), 0.0) for g in groups], width, label=col)
    ax.set_xticks(range(len(groups)))
    labels = [f"{g[0]}\n{'x'.join(map(str, g[1]))}\n{g[2]} {'fwd' if g[3] == 'forward' else 'bwd'}"
              for g in groups]
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("GB/s (fwd 2x, bwd 3x bytes of x)")
    ax.set_title(f"normcore bench ({report.environment.get('threads')} threads)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
