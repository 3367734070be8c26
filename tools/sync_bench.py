"""Time SyncBatchNorm's training step (forward + backward) with 1, 2 and 4 MPI processes and report
the share of the step spent in MPI calls.

    python tools/sync_bench.py [--ranks 1 2 4] [--shape 8 64 56 56] [--steps 10] [--backend numba]

Each process normalizes its own batch of ``--shape`` (per process, float32; the joined batch grows
with the process count, as in data-parallel training). The script starts ``mpiexec -n N`` itself
(the one next to this Python, else on PATH) and prints a Markdown table: per-step milliseconds
(median over steps of the slowest process), the milliseconds inside MPI calls (the collectives,
including the wait for the slowest process), their share, and plain BatchNorm2d on the same
per-process batch without MPI. On a machine with fewer cores than processes the processes share
cores, so the step and the wait inside MPI grow with the count: the table says how many cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np


class TimedComm:
    """An mpi4py communicator whose collectives add their wall time to ``seconds``."""

    def __init__(self, comm: Any) -> None:
        self.comm, self.seconds, self.calls = comm, 0.0, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.comm, name)
        if name not in ("Allgather", "Allreduce", "allgather", "Barrier"):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
        return timed


def worker(args: argparse.Namespace) -> None:
    from mpi4py import MPI

    import normcore

    comm = MPI.COMM_WORLD
    timed = TimedComm(comm)
    shape = tuple(args.shape)
    rng = np.random.default_rng(comm.Get_rank())
    x = rng.normal(0.5, 1.5, shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    sync = normcore.SyncBatchNorm(shape[1], comm=timed, backend=args.backend)
    plain = normcore.BatchNorm2d(shape[1], backend=sync.backend)

    def step(layer: Any) -> None:
        layer(x)
        layer.backward(dy)
        layer.backend.synchronize()

    steps, mpi = [], []
    for i in range(args.warmup + args.steps):
        comm.Barrier()  # every process starts the step together
        before, start = timed.seconds, time.perf_counter()
        step(sync)
        if i >= args.warmup:
            steps.append(time.perf_counter() - start)
            mpi.append(timed.seconds - before)
    plain_steps = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        step(plain)
        if i >= args.warmup:
            plain_steps.append(time.perf_counter() - start)
    rows = comm.gather((steps, mpi, plain_steps), root=0)
    if comm.Get_rank() == 0:
        step_ms = np.max([r[0] for r in rows], axis=0) * 1e3  # the slowest process per step
        mpi_ms = np.mean([r[1] for r in rows], axis=0) * 1e3
        plain_ms = np.median([np.median(r[2]) for r in rows]) * 1e3
        print(json.dumps({"ranks": comm.Get_size(), "backend": sync.backend.name,
                          "step_ms": float(np.median(step_ms)), "mpi_ms": float(np.median(mpi_ms)),
                          "plain_ms": float(plain_ms),
                          "collectives_per_step": timed.calls / (args.warmup + args.steps)}))


def _mpiexec() -> str:
    local = pathlib.Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        sys.exit("mpiexec not found: pip install 'normcore[mpi]' (mpi4py and mpich)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--shape", type=int, nargs=4, default=[8, 64, 56, 56],
                        help="per-process batch (N, C, H, W)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per launch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    mpiexec = _mpiexec()
    print(f"SyncBatchNorm forward+backward, float32, per-process batch {tuple(args.shape)}, "
          f"{os.cpu_count()} cores, {args.steps} steps after {args.warmup} warm-up\n")
    print("| processes | backend | step ms | in MPI ms | MPI share | BatchNorm2d alone ms | "
          "collectives/step |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for n in args.ranks:
        cmd = [mpiexec, "-n", str(n), sys.executable, __file__, "--worker", "--steps",
               str(args.steps), "--warmup", str(args.warmup), "--shape", *map(str, args.shape)]
        if args.backend:
            cmd += ["--backend", args.backend]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every process it started
            proc.communicate()
            print(f"| {n} | timed out after {args.timeout:.0f} s | | | | | |")
            continue
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            print(f"| {n} | failed ({proc.returncode}): {stderr.strip()[-300:]} | | | | | |")
            continue
        r = json.loads(lines[-1])
        print(f"| {n} | {r['backend']} | {r['step_ms']:.1f} | {r['mpi_ms']:.2f} | "
              f"{r['mpi_ms'] / r['step_ms']:.1%} | {r['plain_ms']:.1f} | "
              f"{r['collectives_per_step']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
