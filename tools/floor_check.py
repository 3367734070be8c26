"""Developer tool (not a test): the issue's targets, measured so that a noisy shared host does not
decide them. Each case's contenders (a copy of the input, the numba layer, the torch layer) run
round-robin, a few calls each per round, so all of them see the same machine state; the report
is the median over rounds of each one's best call and of its ratio to the copy of that round.

Run with ``python tools/floor_check.py [--rounds 20] [--case LN ...]``. Numba follows
NUMBA_NUM_THREADS; torch is pinned to the same count. Module API throughout (``layer(x)``,
``layer.backward(dy)``), float32. "copy" is the faster of np.copyto and a parallel numba copy
into an existing array, per round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

CASES: list[tuple[str, tuple[int, ...]]] = [
    ("BN", (32, 64, 56, 56)), ("BN", (8, 256, 28, 28)), ("BN", (256, 64, 8, 8)),
    ("BNeval", (32, 64, 56, 56)), ("LN", (8192, 1024)), ("LN", (12544, 768)),
    ("LN", (4096, 4096)), ("GN", (16, 256, 32, 32)), ("IN", (16, 64, 64, 64)),
    ("RMS", (8192, 1024)),
]


def _layers(kind: str, shape: tuple[int, ...], torch):
    import normcore

    c, d = shape[1], shape[-1]
    make = {
        "BN": (lambda: normcore.BatchNorm2d(c, backend="numba"), lambda: torch.nn.BatchNorm2d(c)),
        "BNeval": (lambda: normcore.BatchNorm2d(c, backend="numba").eval(),
                   lambda: torch.nn.BatchNorm2d(c).eval()),
        "LN": (lambda: normcore.LayerNorm(d, backend="numba"), lambda: torch.nn.LayerNorm(d)),
        "GN": (lambda: normcore.GroupNorm(32, c, backend="numba"), lambda: torch.nn.GroupNorm(32, c)),
        "IN": (lambda: normcore.InstanceNorm2d(c, backend="numba"),
               lambda: torch.nn.InstanceNorm2d(c)),
        "RMS": (lambda: normcore.RMSNorm(d, backend="numba"), lambda: torch.nn.RMSNorm(d)),
    }[kind]
    return make[0](), (make[1]() if torch is not None else None)


def _contenders(kind: str, shape: tuple[int, ...], torch) -> dict[str, Callable[[], object]]:
    from normcore.bench import _numba_copy

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    dst = np.empty_like(x)
    kernel, flat_x, flat_dst = _numba_copy(), x.reshape(-1), dst.reshape(-1)
    ours, theirs = _layers(kind, shape, torch)
    out: dict[str, Callable[[], object]] = {
        "copyto": lambda: np.copyto(dst, x),
        "pcopy": lambda: kernel(flat_dst, flat_x),
        "numba fwd": lambda: ours(x),
    }
    backward = kind != "BNeval"
    if backward:
        out["numba bwd"] = lambda: (ours(x), ours.backward(dy))
    if theirs is not None:
        xt = torch.from_numpy(x).requires_grad_(backward)
        dyt = torch.from_numpy(dy)

        def torch_fwd() -> None:
            with torch.no_grad():
                theirs(xt)

        out["torch fwd"] = torch_fwd
        if backward:
            out["torch bwd"] = lambda: theirs(xt).backward(dyt)
    return out


def measure(fns: dict[str, Callable[[], object]], rounds: int, calls: int = 3) -> dict[str, list[float]]:
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best = float("inf")
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            times[name].append(best)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--case", action="append", help="BN, BNeval, LN, GN, IN, RMS (repeatable)")
    args = ap.parse_args()
    try:
        import numba
        import torch

        torch.set_num_threads(numba.get_num_threads())
    except ImportError:
        torch = None
    print("case                      copy ms | numba fwd  x copy  vs torch | numba bwd* vs torch*")
    for kind, shape in CASES:
        if args.case and kind not in args.case:
            continue
        t = measure(_contenders(kind, shape, torch), args.rounds)
        t["copy"] = [min(a, b) for a, b in zip(t["copyto"], t["pcopy"], strict=True)]
        # * the backward columns time forward + backward on both sides (torch needs its graph)
        print(f"{kind:6} {str(shape):18} {_median_ms(t, 'copy'):7.3f} | "
              f"{_median_ms(t, 'numba fwd'):8.3f} {_ratio(t, 'numba fwd', 'copy'):6.2f}x "
              f"{_ratio(t, 'torch fwd', 'numba fwd'):7.2f}x | {_median_ms(t, 'numba bwd'):8.3f} "
              f"{_ratio(t, 'torch bwd', 'numba bwd'):7.2f}x", flush=True)


def _median_ms(t: dict[str, list[float]], name: str) -> float:
    return statistics.median(t[name]) * 1e3 if name in t else float("nan")


def _ratio(t: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a's time over b's (both measured in the same round)."""
    if a not in t or b not in t:
        return float("nan")
    return statistics.median(x / y for x, y in zip(t[a], t[b], strict=True))


if __name__ == "__main__":
    main()
