"""The numba backend's on-disk cache across processes: kernels saved by one process run when a
later process loads them, whatever the order in which processes compiled them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")

LAYERNORM = """
import numpy as np, normcore
x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
print(float(normcore.LayerNorm(16, backend="numba")(x).sum()))
"""

BATCHNORM = """
import numpy as np, normcore
x = np.random.default_rng(0).standard_normal((4, 8, 5, 5)).astype(np.float32)
print(float(normcore.BatchNorm2d(8, backend="numba")(x).sum()))
"""


def _run(code: str, cache: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    env.pop("NORMCORE_NUMBA_SERIAL_MAX", None)  # the default: these small inputs run serially
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_kernel_cached_by_a_process_that_loaded_the_block_runner_runs_when_loaded(tmp_path):
    """Process 1 compiles and caches the parallel block runner (any layer does); process 2 loads
    it from the cache while it compiles a BatchNorm kernel, so numba saves that kernel without its
    hook that starts numba's threading layer; process 3 loads the kernel on an input small enough
    to run serially. That used to crash (SIGSEGV) unless the layer was started first."""
    cache = str(tmp_path / "numba-cache")
    first = _run(LAYERNORM, cache)
    assert first.returncode == 0, first.stderr
    runs = [_run(BATCHNORM, cache) for _ in range(2)]  # compiles and saves, then loads
    for run in runs:
        assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert runs[0].stdout == runs[1].stdout
