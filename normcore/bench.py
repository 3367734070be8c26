"""Benchmark measurements: layers x shapes x dtypes x backends, with torch and the peers (ONNX
Runtime, JAX) as reference columns.

This module measures; it prints nothing (``normcore bench`` in :mod:`normcore.cli` renders).
The layers and their shapes come from the layer table (:mod:`normcore.layers`). Every timing goes
through the module API (``layer(x)``, ``layer.backward(dy)``) after warm-up calls, so JIT
compilation is excluded. Within a case every column (the backends, torch) and a plain copy of the
same array run round-robin, so all of them see the same machine state; the reported time is the
median over rounds and the ratios to the copy and to torch are medians of the per-round ratios
(the slow NumPy reference is timed on its own, and each peer in its own process
(:mod:`normcore.bench_peers`): "vs numpy" and "vs <peer>" are ratios of medians). Memory traffic is
counted as 2x the bytes of x for a forward (read x, write y) and 3x for a backward (read x and
dy, write dx). ``device="cuda"`` times device backends and torch on the GPU against a device copy
(``normcore bench --gpu``).

>>> from normcore import bench
>>> cases = bench.default_cases(layers=["layernorm"], quick=True)
>>> report = bench.run(cases, ["numpy"], repeat=2, use_torch=False)
>>> sorted({r.pass_ for r in report.rows})
['backward', 'forward']
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import layers as _layers
from . import registry
from ._bench_render import plot, summary
from ._bench_timing import (
    Timer,
    alloc_timer,
    copy_timers,
    cupy_version,
    device_copy_timer,
    distribution_version,
    environment,
    median_ratio,
    run_rounds,
    thread_count,
    threading_layer,
    torch_available,
    torch_threads,
)

__all__ = [
    "LAYERS", "BenchCase", "BenchRow", "BenchReport", "default_cases", "run", "thread_count",
    "distribution_version", "torch_available", "columns", "summary", "cupy_version",
    "threading_layer", "plot",
]

REFERENCE = registry.REFERENCE
TORCH = "torch"
_VARIANT_LABELS = {"nhwc": "NHWC", "eval": "eval"}

#: Bench key (``--layer``) -> (table row, variant): each row with bench shapes, then its variants.
#: ``<key>-eval`` times the evaluation forward only; ``<key>-nhwc`` feeds NCHW-shaped input with
#: channels-last (NHWC) strides, to torch too.
_ENTRIES: dict[str, tuple[_layers.Layer, str]] = {}
for _row in _layers.LAYERS:
    if _row.bench or _row.gpu:
        _ENTRIES[_row.key] = (_row, "")
        for _v in _row.variants:
            _ENTRIES[f"{_row.key}-{_v}"] = (_row, _v)

#: Layer keys -> display name.
LAYERS: dict[str, str] = {
    k: row.display + (f" ({_VARIANT_LABELS[v]})" if v else "") for k, (row, v) in _ENTRIES.items()}


@dataclass(frozen=True)
class BenchCase:
    """One layer on one input shape and dtype."""

    layer: str  # a key of LAYERS
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def row(self) -> _layers.Layer:
        return _ENTRIES[self.layer][0]

    @property
    def variant(self) -> str:
        """``""``, ``"nhwc"`` or ``"eval"``."""
        return _ENTRIES[self.layer][1]

    @property
    def label(self) -> str:
        return f"{LAYERS[self.layer]} {'x'.join(map(str, self.shape))} {self.dtype}"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def passes(self) -> tuple[str, ...]:
        return ("forward",) if self.variant == "eval" else ("forward", "backward")

    def arrange(self, a: np.ndarray) -> np.ndarray:
        """The case's input layout for a C-order array of its shape: NHWC strides for the
        channels-last case (a view of an NHWC buffer, as torch's ``channels_last``)."""
        if self.variant == "nhwc":
            return np.ascontiguousarray(np.moveaxis(a, 1, -1)).transpose(0, 3, 1, 2)
        return a


@dataclass
class BenchRow:
    """One measured (case, column, pass). Times in milliseconds; None where not measured."""

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
    #: peer name -> the peer's time over this column's (> 1: this column is faster)
    speedup_peers: dict[str, float] = field(default_factory=dict)
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
    alloc_ms: dict[str, float] = field(default_factory=dict)  # case label -> x.copy() time
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # peers left out and why, ...
    #: peer -> case label -> largest forward difference from the NumPy reference
    peer_max_abs_err: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "copy_ms": self.copy_ms,
                "alloc_ms": self.alloc_ms, "notes": self.notes,
                "peer_max_abs_err": self.peer_max_abs_err,
                "rows": [r.as_dict() for r in self.rows]}


# ---------------------------------------------------------------------- cases
def default_cases(layers: Sequence[str] | None = None, dtypes: Sequence[str] = ("float32",),
                  quick: bool = False, gpu: bool = False) -> list[BenchCase]:
    """The default grid (or the small ``quick`` one, or the GPU one), restricted to ``layers``."""
    if gpu:
        keys = [k for k, (row, v) in _ENTRIES.items() if row.gpu and not v]
    else:
        keys = [k for k, (row, _) in _ENTRIES.items() if row.bench]
    if layers:
        chosen = [normalize_layer(k) for k in layers]
        missing = [k for k in chosen if k not in keys]
        if missing:
            raise ValueError(f"layer {missing[0]!r} has no {'GPU ' if gpu else ''}shapes in the "
                             f"layer table; choose from {', '.join(keys)}")
        keys = chosen
    return [BenchCase(k, s, np.dtype(d).name) for k in keys for s in _shapes(k, quick, gpu)
            for d in dtypes]


def _shapes(key: str, quick: bool, gpu: bool) -> tuple[tuple[int, ...], ...]:
    row, variant = _ENTRIES[key]
    shapes = row.gpu if gpu else (row.bench_quick if quick else row.bench)
    return shapes[:1] if variant or (gpu and quick) else shapes


def _canonical(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in " _-()")


_ALIASES = {**{_canonical(v): k for k, v in LAYERS.items()}, **{_canonical(k): k for k in LAYERS}}


def normalize_layer(name: str) -> str:
    """Accept ``BatchNorm2d``, ``batchnorm2d``, ``GroupNorm(32)``, ``BatchNorm2d (eval)``-like
    spellings."""
    key = _ALIASES.get(_canonical(name))
    if key is None:
        raise ValueError(f"unknown layer {name!r}; choose from {', '.join(LAYERS)}")
    return key


def _make_layer(case: BenchCase, backend: str) -> Any:
    import normcore

    row = case.row
    layer = getattr(normcore, row.name)(**row.kwargs(case.shape), **row.extra, backend=backend,
                                        dtype=np.dtype(case.dtype))
    return layer.eval() if case.variant == "eval" else layer


def _make_torch_layer(case: BenchCase, device: str = "cpu") -> Any:
    import torch

    row = case.row
    if row.torch is None:
        raise ValueError(f"{row.name} has no torch counterpart")
    layer = getattr(torch.nn, row.torch)(**row.kwargs(case.shape), dtype=getattr(torch, case.dtype),
                                         device=device)
    return layer.eval() if case.variant == "eval" else layer


# ---------------------------------------------------------------------- timers
def _normcore_timers(case: BenchCase, backend: str, x_host: np.ndarray,
                     dy_host: np.ndarray) -> dict[str, Timer]:
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
    timers = {"forward": Timer(lambda: layer(x), sync=be.synchronize)}
    if backward:
        timers["backward"] = Timer(lambda: layer.backward(dy), setup=lambda: layer(x),
                                   sync=be.synchronize)
    if not isinstance(x, np.ndarray):  # a device backend: compare with a copy on its device
        with contextlib.suppress(Exception):
            timers["copy"] = device_copy_timer(x)
    return timers


def _torch_timers(case: BenchCase, x_host: np.ndarray, dy_host: np.ndarray,
                  device: str = "cpu") -> dict[str, Timer]:
    import torch

    layer = _make_torch_layer(case, device)
    backward = "backward" in case.passes
    # .to(device) keeps the NHWC strides of the channels-last case (preserve_format)
    x = torch.from_numpy(x_host).to(device).requires_grad_(backward)
    dy = torch.from_numpy(dy_host).to(device)
    params = [p for p in layer.parameters() if p.requires_grad]
    state: dict[str, Any] = {}
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

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
    sync()
    timers = {"forward": Timer(forward, sync=sync)}
    if backward:
        timers["backward"] = Timer(grad, setup=setup, sync=sync)
    return timers


# ---------------------------------------------------------------------- the run
def run(cases: Sequence[BenchCase], backends: Sequence[str], repeat: int = 10,
        use_torch: bool = True, progress: Callable[[str], None] | None = None,
        peers: Sequence[str] = (), device: str = "cpu") -> BenchReport:
    """Measure every case on every backend (plus the numpy reference, torch when importable, and
    the ``peers`` (:mod:`normcore.bench_peers`) that are installed).

    Within a case the columns and the copy run round-robin, ``repeat`` rounds at most (fewer
    when a round is slow); times are medians over rounds and the ratios to the copy and to torch
    are medians of per-round ratios. The reference column is timed on its own, before the others
    (its temporaries would evict their data), and each peer in its own process before everything:
    "vs numpy" and "vs <peer>" are ratios of medians. ``device="cuda"``: no reference, torch on
    the GPU, and the copy is a device copy. ``progress(description)`` is called once per (case,
    column): ``len(cases) * len(columns(backends, use_torch, device))`` calls, plus one per
    (case, peer).
    """
    from . import bench_peers

    gpu = device != "cpu"
    cols = columns(backends, use_torch, device)
    report = BenchReport(environment=environment())
    threads = report.environment["threads"]
    report.environment["device"] = device
    if gpu:
        report.notes.append(_gpu_note())
    peer_rounds: dict[str, list[Any]] = {}
    for peer in peers:
        why = bench_peers.unavailable(peer)
        if why:
            report.notes.append(f"{peer} column left out: {why}")
            continue
        report.notes.append(bench_peers.NOTES[peer])
        msgs = bench_peers.measure(peer, cases, threads, repeat, progress)
        peer_rounds[peer] = [m.get("error") or m["timings"] for m in msgs]
        for case, m in zip(cases, msgs, strict=True):
            err = m.get("max_abs_err")
            if err is not None:
                report.peer_max_abs_err.setdefault(peer, {})[case.label] = err
                if err > bench_peers.TOLERANCE.get(case.dtype, 2e-3):
                    report.notes.append(f"{peer} differs from the reference on {case.label} "
                                        f"by up to {err:.3g}")
    rng = np.random.default_rng(0)
    with torch_threads(threads) if TORCH in cols else contextlib.nullcontext():
        for i, case in enumerate(cases):
            x = case.arrange(rng.standard_normal(case.shape, dtype=np.float64).astype(case.dtype))
            dy = case.arrange(rng.standard_normal(case.shape, dtype=np.float64).astype(case.dtype))
            copies = [device_copy_timer(x)] if gpu else copy_timers(x)
            alloc = [] if gpu else [alloc_timer(x)]
            timers: dict[str, dict[str, Timer]] = {}
            errors: dict[str, str] = {}
            for col in cols:
                try:
                    timers[col] = (_torch_timers(case, x, dy, device) if col == TORCH
                                   else _normcore_timers(case, col, x, dy))
                except Exception as exc:
                    errors[col] = f"{type(exc).__name__}: {exc}"
            # the reference runs on its own: its big temporaries would evict everything between
            # the fast columns, and "vs numpy" is a ratio of medians with a wide margin anyway
            reference = {c: timers.pop(c) for c in [REFERENCE] if c in timers}
            run_rounds(reference, [], repeat, errors)
            run_rounds(timers, copies + alloc, repeat, errors)
            timers = {**reference, **timers}
            host_copy = [min(r) for r in zip(*(t.rounds for t in copies), strict=True)]
            report.copy_ms[case.label] = statistics.median(host_copy) * 1e3
            if alloc:
                report.alloc_ms[case.label] = statistics.median(alloc[0].rounds) * 1e3
            timings: dict[str, Any] = dict(errors)
            for col, group in timers.items():
                timings[col] = {name: t.rounds for name, t in group.items()}
                if progress is not None:
                    progress(f"{case.label} on {col}")
            for _ in errors:
                if progress is not None:
                    progress(f"{case.label} failed")
            for peer, results in peer_rounds.items():
                timings[peer] = results[i]
            report.rows.extend(_rows(case, cols + list(peer_rounds), timings, host_copy,
                                     list(peer_rounds)))
    return report


def _gpu_note() -> str:
    return ("GPU: times are wall clock around each call with the device synchronized after it "
            "(launch latency included); copy = a device-to-device CuPy copy of x")


def columns(backends: Sequence[str], use_torch: bool = True, device: str = "cpu") -> list[str]:
    """The measured columns: the reference first (not on a GPU), the named backends, then torch."""
    names = [b for b in dict.fromkeys(backends) if b != REFERENCE]
    cols = names if device != "cpu" else [REFERENCE] + names
    if use_torch and torch_available():
        cols.append(TORCH)
    return cols


def _rows(case: BenchCase, cols: list[str], timings: dict[str, Any],
          copy_rounds: Sequence[float], peers: Sequence[str] = ()) -> list[BenchRow]:
    """Rows from per-round seconds: ``timings[col]`` maps a pass (and "copy" for a device
    backend's own copy) to its rounds, or is an error string; ``copy_rounds`` is the host copy's.
    A peer without a pass (ONNX Runtime has no backward) has no row for it."""
    rows = []
    for pass_ in case.passes:
        traffic = (2 if pass_ == "forward" else 3) * case.nbytes

        def rounds_of(col: str, pass_: str = pass_) -> Sequence[float] | None:
            t = timings.get(col)
            return t[pass_] if isinstance(t, dict) and pass_ in t else None

        ref, torch_rounds = rounds_of(REFERENCE), rounds_of(TORCH)
        for col in cols:
            t = timings[col]
            if col in peers and isinstance(t, dict) and pass_ not in t:
                continue
            row = BenchRow(LAYERS[case.layer], case.shape, case.dtype, col, pass_)
            if isinstance(t, str):
                row.error = t
            else:
                mine = t[pass_]
                row.ms, row.repeats = statistics.median(mine) * 1e3, len(mine)
                row.gbs = traffic / (row.ms * 1e-3) / 1e9
                alone = col == REFERENCE or col in peers  # timed on their own (see run)
                # GB/s over the copy's GB/s, per round: (traffic / t) / (2 * bytes / copy)
                copy = t.get("copy", copy_rounds)
                row.copy_fraction = (median_ratio(copy, mine, not alone) * traffic
                                     / (2 * case.nbytes))
                if ref is not None:
                    row.speedup_reference = median_ratio(ref, mine, same_rounds=False)
                if torch_rounds is not None:
                    row.speedup_torch = median_ratio(torch_rounds, mine, not alone)
                for peer in peers:
                    theirs = rounds_of(peer)
                    if theirs is not None and peer != col:
                        row.speedup_peers[peer] = median_ratio(theirs, mine, same_rounds=False)
            rows.append(row)
    return rows

