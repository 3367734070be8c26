"""Rendering of ``normcore bench`` reports: the table, the geometric-mean summary (what
the former tools/perf_check.py printed), the ``--check`` gate and the plot. :mod:`normcore.bench` measures;
:mod:`normcore.cli` parses arguments and calls these with its output object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .registry import REFERENCE

TORCH = "torch"


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    """A number in ``spec`` with ``suffix``, or ``-`` for None."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def summary(report: Any) -> dict[str, dict[str, float]]:
    """Per column, geometric means over the report's rows of its speed-up over torch (forward,
    backward, all) and over the reference, as the former tools/perf_check.py summarized."""
    out: dict[str, dict[str, float]] = {}
    for col in dict.fromkeys(r.backend for r in report.rows):
        mine = [r for r in report.rows if r.backend == col and not r.error]
        entry = {}
        for key, rows in (("forward", [r for r in mine if r.pass_ == "forward"]),
                          ("backward", [r for r in mine if r.pass_ == "backward"]),
                          ("all", mine)):
            vals = [r.speedup_torch for r in rows if r.speedup_torch]
            if vals and col != TORCH:
                entry[f"vs torch {key}"] = _geomean(vals)
        ref = [r.speedup_reference for r in mine if r.speedup_reference]
        if ref and col != REFERENCE:
            entry["vs reference"] = _geomean(ref)
        out[col] = entry
    return out


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def plot(report: Any, path: str) -> None:
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


def gpu_unavailable(names: Sequence[str]) -> str | None:
    """Why ``--gpu`` cannot run here (it needs CuPy, a CUDA build of torch for the torch column,
    and a device backend), or None."""
    import importlib.util

    from normcore import registry

    if importlib.util.find_spec("cupy") is None:
        return "needs CuPy for the device copy (pip install cupy-cuda12x)"
    if not names:
        return "no device backend is available here (numba-cuda needs a CUDA GPU)"
    for name in names:
        be = registry.get_backend(name)
        if getattr(be, "device", "cpu") == "cpu":
            return f"backend {name!r} is a CPU backend"
        if getattr(getattr(be, "_k", None), "SIMULATOR", False):
            return f"backend {name!r} runs on the CUDA simulator: nothing to time"
    return None


def table(report: Any, out: Any, threads: int, device: str) -> None:
    from normcore import bench
    from normcore.bench_peers import PEERS

    peers = [p for p in PEERS if any(p in r.speedup_peers for r in report.rows)]
    rows = []
    for r in report.rows:
        head = [r.layer, "x".join(map(str, r.shape)), r.dtype,
                "fwd" if r.pass_ == "forward" else "bwd", r.backend]
        if r.error:
            rows.append(head + ["error"] + [""] * (4 + len(peers)))
            continue
        rows.append(head + [fmt(r.ms, ".3f"), fmt(r.gbs, ".1f"),
                     fmt(None if r.copy_fraction is None else 100 * r.copy_fraction, ".0f", "%"),
                     fmt(r.speedup_reference, ".2f", "x"), fmt(r.speedup_torch, ".2f", "x")]
                    + [fmt(r.speedup_peers.get(p), ".2f", "x") for p in peers])
    copy = ("a device-to-device copy" if device != "cpu"
            else "the faster of np.copyto and a parallel copy")
    headers = ["layer", "shape", "dtype", "pass", "backend", "ms", "GB/s", "of copy",
               f"vs {bench.REFERENCE}", "vs torch"] + [f"vs {_short(p)}" for p in peers]
    out.table(f"normcore bench ({threads} threads{', ' + device if device != 'cpu' else ''}; "
              f"GB/s counts 2x bytes of x forward, 3x backward; copy = {copy}; the columns are "
              f"timed round-robin, ratios to copy and torch are medians of per-round ratios"
              f"{'; peers run in their own processes: vs a peer is a ratio of medians' if peers else ''})",
              headers, rows, right=tuple(range(5, len(headers))))
    for note in report.notes:
        out.print(f"note: {note}", style="yellow")
    for col, entry in bench.summary(report).items():
        if entry:
            out.print(f"geometric mean, {col}: " + ", ".join(
                f"{k} {v:.2f}x" for k, v in entry.items()))
    errors = [r for r in report.rows if r.error]
    for r in {(r.backend, r.error): r for r in errors}.values():
        out.print(f"{r.backend} failed on {r.layer} {'x'.join(map(str, r.shape))} {r.dtype}: "
                  f"{r.error}", style="red")


def _short(peer: str) -> str:
    return {"onnxruntime": "ort"}.get(peer, peer)


def check(report: Any, out: Any, minimum: float | None) -> int:
    """``--check RATIO``: exit status 1 when a measured backend's geometric-mean speed-up over
    torch (forward and backward together) is below RATIO."""
    if minimum is None:
        return 0
    from normcore import bench, bench_peers

    low = []
    for col, entry in bench.summary(report).items():
        if col in (bench.REFERENCE, bench.TORCH) or col in bench_peers.PEERS:
            continue
        value = entry.get("vs torch all")
        if value is None:
            out.print(f"check: {col} has no torch ratio to check", style="red")
            low.append(col)
        elif value < minimum:
            out.print(f"check FAILED: {col} is {value:.2f}x torch, below {minimum:.2f}x",
                      style="bold red")
            low.append(col)
        else:
            out.print(f"check passed: {col} is {value:.2f}x torch (at least {minimum:.2f}x)",
                      style="green")
    return 1 if low else 0
