"""The ``normcore`` command line: ``info``, ``bench`` and ``verify``.

Output uses rich when it is installed (``pip install 'normcore[cli]'``) and plain text otherwise.
The measuring lives in :mod:`normcore.bench` and the conformance cases in :mod:`normcore.testing`;
this module only parses arguments and renders.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


# ---------------------------------------------------------------------- output
class _Out:
    """Rich console when available, plain ``print`` otherwise."""

    def __init__(self, plain: bool = False) -> None:
        self.console = None
        if not plain:
            try:
                from rich.console import Console

                self.console = Console(highlight=False)
                if not self.console.is_terminal:  # piped or captured: don't wrap at 80 columns
                    self.console = Console(highlight=False, width=max(self.console.width, 160))
            except ImportError:
                pass

    @property
    def rich(self) -> bool:
        return self.console is not None

    def print(self, text: str = "", style: str | None = None) -> None:
        if self.console is not None:
            self.console.print(text, style=style, markup=False, soft_wrap=True)
        else:
            print(text)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]],
              right: Sequence[int] = ()) -> None:
        if self.console is not None:
            from rich import box
            from rich.table import Table

            t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
            for i, h in enumerate(headers):
                t.add_column(h, justify="right" if i in right else "left", overflow="fold")
            for r in rows:
                t.add_row(*r)
            self.console.print(t)
            return
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

        print(title)
        print(line(headers))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print(line(r))

    def progress(self, total: int, description: str) -> _Progress:
        return _Progress(self, total, description)


class _Progress:
    """A rich progress bar, or one printed line per finished item without rich."""

    def __init__(self, out: _Out, total: int, description: str) -> None:
        self.out, self.total, self.description, self.done = out, total, description, 0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.out.rich:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[item]}"),
                                 console=self.out.console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, item="")
        return self

    def advance(self, item: str) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, item=item)
        else:
            print(f"[{self.done}/{self.total}] {item}", flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


# ---------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace, out: _Out) -> int:
    import numpy as np

    import normcore
    from normcore import bench, registry

    def version_of(dist: str) -> str:
        return bench.distribution_version(dist) or "not installed"

    out.print(f"normcore {normcore.__version__} (backend api_version {normcore.API_VERSION})",
              style="bold")
    rows = [
        ["Python", f"{platform.python_version()} ({sys.executable})"],
        ["NumPy", np.__version__],
        ["Numba", version_of("numba")],
        ["CuPy", bench.cupy_version() or "not installed"],
        ["torch (bench reference)", version_of("torch")],
        ["threads", str(bench.thread_count())],
        ["Numba threading layer", bench.threading_layer() or "-"],
    ]
    out.table("Environment", ["", "version"], rows)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        statuses = registry.list_backends(check=args.check)
        entries = registry._entry_points()
        try:
            chosen, why = registry.resolve(None)
            default = f"{chosen.name}, chosen by {why}"
        except registry.BackendError as exc:
            default = f"none: {exc}"
    brows = []
    for s in statuses:
        entry = entries.get(s.name)
        dist = f"{s.distribution} {entry.dist_version if entry else ''}".strip() or "-"
        brows.append([s.name, s.status, s.device, s.array_library,
                      str(entry.priority) if entry else "-", s.version or "-", dist])
    out.table("Backends", ["name", "status", "device", "arrays", "priority", "version",
                           "distribution"], brows, right=(4,))
    for s in statuses:
        if s.status in ("broken", "unavailable"):
            out.print(f"{s.name} is {s.status}: {s.reason}",
                      style="red" if s.status == "broken" else "yellow")
    out.print(f"default backend: {default}", style="bold")
    if not args.check:
        out.print("(installed: not loaded yet; `normcore info --check` loads every backend to ask "
                  "whether it can run here)")
    for w in caught:
        out.print(f"warning: {w.message}", style="yellow")
    return 0


# ---------------------------------------------------------------------- bench
def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def cmd_bench(args: argparse.Namespace, out: _Out) -> int:
    from normcore import _bench_render as _render
    from normcore import bench, bench_peers, registry

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            out.print("error: --plot needs matplotlib: pip install 'normcore[plot]'", style="red")
            return 2
    device = "cuda" if args.gpu else "cpu"
    if args.gpu and args.peers:
        out.print("error: --peers times CPU peers; it does not go with --gpu", style="red")
        return 2
    dtypes = args.dtype or (["float32", "float16"] if args.gpu else ["float32"])
    try:
        cases = bench.default_cases(args.layer, dtypes, quick=args.quick, gpu=args.gpu)
    except (ValueError, TypeError) as exc:
        out.print(f"error: {exc}", style="red")
        return 2
    if args.backend:
        names = list(dict.fromkeys(n for arg in args.backend for n in arg.split(",") if n))
        known = set(registry.backend_names())
        unknown = [n for n in names if n not in known]
        if unknown:
            out.print("error: " + registry._unknown_message(unknown[0], sorted(known)), style="red")
            return 2
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = [s.name for s in registry.list_backends(check=True) if s.available
                     and (s.device != "cpu") == args.gpu]
    if args.gpu:
        why = _render.gpu_unavailable(names)
        if why:
            out.print(f"error: --gpu: {why}", style="red")
            return 2
    peers = list(bench_peers.PEERS) if args.peers else []
    repeat = args.repeat if args.repeat else (5 if args.quick else 10)
    cols = bench.columns(names, use_torch=not args.no_torch, device=device)
    threads = bench.thread_count()
    shown = cols + [p for p in peers if not bench_peers.unavailable(p)]
    out.print(f"normcore bench: {len(cases)} cases x {len(shown)} columns ({', '.join(shown)}), "
              f"{threads} threads, median of up to {repeat} round-robin rounds after warm-up")
    with out.progress(len(cases) * len(shown), "bench") as bar:
        report = bench.run(cases, names, repeat=repeat, use_torch=not args.no_torch,
                           progress=bar.advance, peers=peers, device=device)
    _render.table(report, out, threads, device)
    code = _render.check(report, out, args.check)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report.as_dict(), fh, indent=2)
        out.print(f"saved {args.json}")
    if args.plot:
        bench.plot(report, args.plot)
        out.print(f"saved {args.plot}")
    return code


# ---------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace, out: _Out) -> int:
    from normcore import registry
    from normcore.testing import all_cases, applies, verify

    try:
        backend = registry.get_backend(args.backend)
    except registry.BackendError as exc:
        out.print(f"error: {exc}", style="red")
        if exc.__cause__ is not None:
            out.print(f"  caused by {type(exc.__cause__).__name__}: {exc.__cause__}", style="red")
        return 1
    total = sum(1 for c in all_cases() if not (args.quick and c.big) and applies(c, backend))
    out.print(f"verifying backend {backend.name!r} ({total} cases{', quick' if args.quick else ''})")
    failures = []
    with out.progress(total, f"verify {backend.name}") as bar:
        def progress(result: Any) -> None:
            status = "skipped" if result.skipped else ("ok" if result.ok else "FAILED")
            bar.advance(f"{result.id} {status}")
            if not result.ok:
                failures.append(result)

        results = verify(backend, quick=args.quick, progress=progress)
    passed = sum(1 for r in results if r.ok and not r.skipped)
    skipped = sum(1 for r in results if r.skipped)
    failed = len(results) - passed - skipped
    if failures:
        out.print(f"\n{len(failures)} failing case(s):", style="bold red")
        for r in failures:
            out.print(f"FAILED {r.id}", style="red")
            for line in str(r.message).splitlines() or [""]:
                out.print(f"    {line}")
    if skipped and args.verbose:
        for r in results:
            if r.skipped:
                out.print(f"skipped {r.id}: {r.message}", style="yellow")
    summary = f"{passed} passed, {failed} failed, {skipped} skipped"
    if failed:
        out.print(f"{summary}: backend {backend.name!r} does NOT conform", style="bold red")
        return 1
    out.print(f"{summary}: backend {backend.name!r} conforms", style="bold green")
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from normcore import __version__

    parser = argparse.ArgumentParser(
        prog="normcore", description="normcore: normalization layers on pluggable backends")
    parser.add_argument("--version", action="version", version=f"normcore {__version__}")
    parser.add_argument("--plain", action="store_true", help="plain text output (no rich)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    i = sub.add_parser("info", help="versions, threads, discovered backends and the default backend")
    i.add_argument("--check", action="store_true",
                   help="load every backend to ask whether it can run here (listing alone "
                        "imports none)")

    b = sub.add_parser("bench", help="time layers forward and backward on each backend",
                       description="Time every layer x shape x dtype on each backend (the numpy "
                       "reference is always measured on CPUs, torch when importable, and ONNX "
                       "Runtime and JAX with --peers). The layers and shapes come from the layer "
                       "table, normcore/layers.py.")
    b.add_argument("--backend", action="append", metavar="NAME",
                   help="backend to measure (repeatable or comma separated; default: every "
                   "available backend)")
    b.add_argument("--layer", action="append", metavar="LAYER",
                   help="layer to measure (repeatable): " + ", ".join(_layer_keys()))
    b.add_argument("--dtype", action="append", metavar="DTYPE",
                   help="input dtype (repeatable; default float32)")
    b.add_argument("--quick", action="store_true", help="small shapes and few repeats (fast)")
    b.add_argument("--repeat", type=int, default=0,
                   help="most timed repeats per measurement (default 10, 5 with --quick)")
    b.add_argument("--no-torch", action="store_true", help="leave out the torch column")
    b.add_argument("--peers", action="store_true",
                   help="add ONNX Runtime and JAX columns (those installed), each timed in its "
                   "own process")
    b.add_argument("--gpu", action="store_true",
                   help="time the device backends and torch on a CUDA GPU against a device copy "
                   "(GPU shapes, float32 and float16; needs CuPy and a CUDA build of torch)")
    b.add_argument("--check", type=float, metavar="RATIO",
                   help="exit 1 when a measured backend's geometric-mean speed-up over torch is "
                   "below RATIO (e.g. 1.0: never slower than torch overall)")
    b.add_argument("--json", metavar="FILE", help="save the results as JSON")
    b.add_argument("--plot", metavar="FILE.png", help="save a grouped bar chart (needs matplotlib)")

    v = sub.add_parser("verify", help="run the conformance kit against a backend (exit 1 if it "
                       "does not conform)")
    v.add_argument("--backend", required=True, metavar="NAME", help="backend to verify")
    v.add_argument("--quick", action="store_true", help="leave out the cases with larger arrays")
    v.add_argument("-v", "--verbose", action="store_true", help="also list skipped cases")
    return parser


def _layer_keys() -> list[str]:
    from normcore.bench import LAYERS

    return list(LAYERS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    out = _Out(plain=args.plain)
    commands = {"info": cmd_info, "bench": cmd_bench, "verify": cmd_verify}
    try:
        return commands[args.command](args, out)
    except KeyboardInterrupt:
        out.print("interrupted", style="red")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
