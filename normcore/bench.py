"""Benchmark measurements: layers x shapes x dtypes x backends (and torch as a reference column).

This module measures; it prints nothing (``normcore bench`` in :mod:`normcore.cli` renders).
Every timing goes through the module API (``layer(x)``, ``layer.backward(dy)``) after warm-up
calls, so JIT compilation is excluded. Within a case every column (the backends, torch) and a
plain copy of the same array run round-robin, so all of them see the same machine state; the
reported time is the median over rounds and the ratios to the copy and to torch are medians of
the per-round ratios (the slow NumPy reference is timed on its own: "vs numpy" is a ratio of
medians). Memory traffic is counted as 2x the bytes of x for a forward
(read x, write y) and 3x for a backward (read x and dy, write dx).

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
import math
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

#: Layer keys (``--layer``) -> display name. ``batchnorm2d-eval`` times the evaluation forward only;
#: ``batchnorm2d-nhwc`` feeds NCHW-shaped input with channels-last (NHWC) strides, to torch too.
LAYERS: dict[str, str] = {
    "batchnorm2d": "BatchNorm2d",
    "batchnorm2d-nhwc": "BatchNorm2d (NHWC)",
    "batchnorm2d-eval": "BatchNorm2d (eval)",
    "batchnorm1d": "BatchNorm1d",
    "layernorm": "LayerNorm",
    "groupnorm": "GroupNorm(32)",
    "instancenorm2d": "InstanceNorm2d",
    "rmsnorm": "RMSNorm",
}

_DEFAULT_SHAPES: dict[str, list[tuple[int, ...]]] = {
    "batchnorm2d": [(32, 64, 56, 56), (8, 256, 28, 28), (256, 64, 8, 8)],
    "batchnorm2d-nhwc": [(32, 64, 56, 56)],
    "batchnorm2d-eval": [(32, 64, 56, 56)],
    "batchnorm1d": [(4096, 512)],
    "layernorm": [(8192, 1024), (12544, 768), (4096, 4096)],
    # 16 MB fits the test machine's last-level cache with its output, 64 MB does not: the two
    # show the layer against a copy from cache and from memory (docs/backends.md)
    "groupnorm": [(16, 256, 32, 32), (64, 256, 32, 32)],
    "instancenorm2d": [(16, 64, 64, 64)],
    "rmsnorm": [(8192, 1024)],
}

_QUICK_SHAPES: dict[str, list[tuple[int, ...]]] = {
    "batchnorm2d": [(8, 16, 16, 16)],
    "batchnorm2d-nhwc": [(8, 16, 16, 16)],
    "batchnorm2d-eval": [(8, 16, 16, 16)],
    "batchnorm1d": [(256, 64)],
    "layernorm": [(256, 256)],
    "groupnorm": [(4, 64, 8, 8)],
    "instancenorm2d": [(4, 16, 16, 16)],
    "rmsnorm": [(256, 256)],
}

#: Seconds of timed work to aim for per timer in a case: a case whose round is slow (the NumPy
#: reference on big shapes) gets fewer rounds (never fewer than ``_MIN_REPEATS``), fast ones up
#: to ``repeat``.
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

    def arrange(self, a: np.ndarray) -> np.ndarray:
        """The case's input layout for a C-order array of its shape: NHWC strides for the
        channels-last case (a view of an NHWC buffer, as torch's ``channels_last``)."""
        if self.layer.endswith("-nhwc"):
            return np.ascontiguousarray(np.moveaxis(a, 1, -1)).transpose(0, 3, 1, 2)
        return a


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
    return importlib.util.find_spec("torch") is not None


def environment() -> dict[str, Any]:
    from . import __version__

    return {
        "normcore": __version__, "python": platform.python_version(),
        "numpy": np.__version__, "numba": distribution_version("numba"),
        "torch": distribution_version("torch"), "threads": thread_count(),
        "numba_threading_layer": threading_layer(),
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
           "batchnorm2d-eval", "batchnorm2d(eval)": "batchnorm2d-eval", "batchnorm2dnhwc":
           "batchnorm2d-nhwc", "batchnorm2d(nhwc)": "batchnorm2d-nhwc"}.get(key, key)
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
    if case.layer == "batchnorm1d":
        return normcore.BatchNorm1d(c, **kw)
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
    if case.layer == "batchnorm1d":
        return torch.nn.BatchNorm1d(c, dtype=dt)
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
@dataclass
class _Timer:
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


def _normcore_timers(case: BenchCase, backend: str, x_host: np.ndarray,
                     dy_host: np.ndarray) -> dict[str, _Timer]:
    """Timers for one backend's passes (plus its own device copy for a device backend)."""
    layer = _make_layer(case, backend)
    be = layer.backend
    x, dy = be.asarray(x_host), be.asarray(dy_host)
    backward = "backward" in case.passes
    # Warm-up: compiles JIT kernels (twice, so caches and allocators settle).
    for _ in range(2):
        layer(x)
        if backward:
            layer.backward(dy)
        be.synchronize()
    timers = {"forward": _Timer(lambda: layer(x), sync=be.synchronize)}
    if backward:
        timers["backward"] = _Timer(lambda: layer.backward(dy), setup=lambda: layer(x),
                                    sync=be.synchronize)
    if not isinstance(x, np.ndarray):  # a device backend: compare with a copy on its device
        with contextlib.suppress(Exception):
            timers["copy"] = _device_copy_timer(x)
    return timers


def _device_copy_timer(x: Any) -> _Timer:
    """A device-to-device copy of ``x`` (CuPy arrays or CUDA array interface)."""
    import cupy

    src = cupy.asarray(x)
    dst = cupy.empty_like(src)
    cupy.copyto(dst, src)
    return _Timer(lambda: cupy.copyto(dst, src), sync=cupy.cuda.runtime.deviceSynchronize)


def _torch_timers(case: BenchCase, x_host: np.ndarray, dy_host: np.ndarray) -> dict[str, _Timer]:
    import torch

    layer = _make_torch_layer(case)
    backward = "backward" in case.passes
    x = torch.from_numpy(x_host).requires_grad_(backward)
    dy = torch.from_numpy(dy_host)
    params = [p for p in layer.parameters() if p.requires_grad]
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
    timers = {"forward": _Timer(forward)}
    if backward:
        timers["backward"] = _Timer(grad, setup=setup)
    return timers


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


def _copy_timers(x: np.ndarray) -> list[_Timer]:
    """``np.copyto`` and, with Numba, a parallel loop on Numba's threads: each round's copy time
    is the faster of the two. (LLVM turns the loop into ``memcpy`` per thread, and glibc picks
    string moves or cache-bypassing stores by size. Measured here, a plain vectorized map over
    the same cache-sized array takes about 1.7x this copy's time, so on cache-sized arrays the
    copy is a floor no layer reaches; on large ones the layers' streaming stores come close.)"""
    dst = np.empty_like(x)
    timers = [_Timer(lambda: np.copyto(dst, x))]
    if importlib.util.find_spec("numba") is not None:
        with contextlib.suppress(Exception):
            kernel = _numba_copy()
            flat_src, flat_dst = x.reshape(-1), dst.reshape(-1)
            kernel(flat_dst, flat_src)  # compile
            timers.append(_Timer(lambda: kernel(flat_dst, flat_src)))
    return timers


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


def _run_rounds(timers: dict[str, dict[str, _Timer]], copies: list[_Timer], repeat: int,
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


def run(cases: Sequence[BenchCase], backends: Sequence[str], repeat: int = 10,
        use_torch: bool = True,
        progress: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every case on every backend (plus the numpy reference, and torch when importable).

    Within a case the columns and the copy run round-robin, ``repeat`` rounds at most (fewer
    when a round is slow); times are medians over rounds and the ratios to the copy and to torch
    are medians of per-round ratios. The reference column is timed on its own, before the others
    (its temporaries would evict their data): "vs numpy" is a ratio of medians.
    ``progress(description)`` is called once per (case, column): the number of calls is
    ``len(cases) * len(columns(backends, use_torch))``.
    """
    cols = columns(backends, use_torch)
    report = BenchReport(environment=environment())
    threads = report.environment["threads"]
    rng = np.random.default_rng(0)
    with _torch_threads(threads) if TORCH in cols else contextlib.nullcontext():
        for case in cases:
            x = case.arrange(rng.standard_normal(case.shape, dtype=np.float64).astype(case.dtype))
            dy = case.arrange(rng.standard_normal(case.shape, dtype=np.float64).astype(case.dtype))
            copies = _copy_timers(x)
            timers: dict[str, dict[str, _Timer]] = {}
            errors: dict[str, str] = {}
            for col in cols:
                try:
                    timers[col] = (_torch_timers(case, x, dy) if col == TORCH
                                   else _normcore_timers(case, col, x, dy))
                except Exception as exc:
                    errors[col] = f"{type(exc).__name__}: {exc}"
            # the reference runs on its own: its big temporaries would evict everything between
            # the fast columns, and "vs numpy" is a ratio of medians with a wide margin anyway
            reference = {c: timers.pop(c) for c in [REFERENCE] if c in timers}
            _run_rounds(reference, [], repeat, errors)
            _run_rounds(timers, copies, repeat, errors)
            timers = {**reference, **timers}
            host_copy = [min(r) for r in zip(*(t.rounds for t in copies), strict=True)]
            report.copy_ms[case.label] = statistics.median(host_copy) * 1e3
            timings: dict[str, Any] = dict(errors)
            for col, group in timers.items():
                timings[col] = {name: t.rounds for name, t in group.items()}
                if progress is not None:
                    progress(f"{case.label} on {col}")
            for _ in errors:
                if progress is not None:
                    progress(f"{case.label} failed")
            report.rows.extend(_rows(case, cols, timings, host_copy))
    return report


def columns(backends: Sequence[str], use_torch: bool = True) -> list[str]:
    """The measured columns: the reference first, then the named backends, then torch."""
    cols = [REFERENCE] + [b for b in dict.fromkeys(backends) if b != REFERENCE]
    if use_torch and torch_available():
        cols.append(TORCH)
    return cols


def _median_ratio(num: Sequence[float], den: Sequence[float], same_rounds: bool = True) -> float:
    """Median over rounds of num/den when both were measured in the same rounds, else the ratio
    of their medians."""
    if not same_rounds:
        return statistics.median(num) / statistics.median(den)
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def _rows(case: BenchCase, cols: list[str], timings: dict[str, Any],
          copy_rounds: Sequence[float]) -> list[BenchRow]:
    """Rows from per-round seconds: ``timings[col]`` maps a pass (and "copy" for a device
    backend's own copy) to its rounds, or is an error string; ``copy_rounds`` is the host copy's."""
    rows = []
    for pass_ in case.passes:
        traffic = (2 if pass_ == "forward" else 3) * case.nbytes

        def rounds_of(col: str, pass_: str = pass_) -> Sequence[float] | None:
            t = timings.get(col)
            return t[pass_] if isinstance(t, dict) and pass_ in t else None

        ref, torch_rounds = rounds_of(REFERENCE), rounds_of(TORCH)
        for col in cols:
            t = timings[col]
            row = BenchRow(LAYERS[case.layer], case.shape, case.dtype, col, pass_)
            if isinstance(t, str):
                row.error = t
            else:
                mine = t[pass_]
                row.ms, row.repeats = statistics.median(mine) * 1e3, len(mine)
                row.gbs = traffic / (row.ms * 1e-3) / 1e9
                alone = col == REFERENCE  # timed on its own (see run)
                # GB/s over the copy's GB/s, per round: (traffic / t) / (2 * bytes / copy)
                copy = t.get("copy", copy_rounds)
                row.copy_fraction = (_median_ratio(copy, mine, not alone) * traffic
                                     / (2 * case.nbytes))
                if ref is not None:
                    row.speedup_reference = _median_ratio(ref, mine, same_rounds=False)
                if torch_rounds is not None:
                    row.speedup_torch = _median_ratio(torch_rounds, mine, not alone)
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
