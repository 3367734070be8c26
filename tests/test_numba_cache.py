"""The numba backend's on-disk cache across processes: kernels saved by one process run when a
later process loads them, whatever the order in which processes compiled them."""

from __future__ import annotations

import os
import pathlib
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


EDITED = """
import numpy as np, normcore, normcore_numba
assert normcore_numba.__file__.startswith({root!r}), normcore_numba.__file__
x = np.arange(8, dtype=np.float64).reshape(2, 4)
var = normcore.get_backend("numba").group_normalize(x.reshape(2, 1, 4, 1), None, None, 0.0, True)[2]
from normcore_numba import _group
print(float(var.sum()), sum(_group.forward_flat.serial.stats.cache_hits.values()))
"""


def test_an_edited_helper_recompiles_the_kernels_that_use_it(tmp_path):
    """numba keys a cached kernel on its own source file: every function a kernel compiles lives
    in the kernel's module (see normcore_numba._jit), so editing a helper recompiles. A copy of
    the package, its kernels cached, then a helper edited: the next process runs the new code."""
    import shutil

    import normcore_numba

    root = tmp_path / "pkg"
    shutil.copytree(pathlib.Path(normcore_numba.__file__).parent, root / "normcore_numba",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cache = str(tmp_path / "numba-cache")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache,
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    env.pop("NORMCORE_NUMBA_SERIAL_MAX", None)  # the default: this small input runs serially
    code = textwrap.dedent(EDITED.format(root=str(root)))

    def run() -> tuple[float, int]:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        value, hits = out.stdout.split()
        return float(value), int(hits)

    # the variance of 0, 1, 2, 3 (and of 4..7), summed over the two rows; compiled, then loaded
    assert run() == (2.5, 0)
    assert run() == (2.5, 1)
    group = root / "normcore_numba" / "_group.py"
    text = group.read_text()
    edited = text.replace("return k + m1, (0.0 if v < 0.0 else v)",
                          "return k + m1, (0.0 if v < 0.0 else v) + 1.0")
    assert edited != text
    group.write_text(edited)
    assert run() == (4.5, 0)  # recompiled from the edited helper
    assert run() == (4.5, 1)
    shared = root / "normcore_numba" / "_shared.py"  # helpers of several kernel files
    text = shared.read_text()
    edited = text.replace("    s1 = 0.0\n    s2 = 0.0\n    for i in range(v.shape[0]):\n"
                          "        t = np.float64(v[i]) - k",
                          "    s1 = 0.0\n    s2 = 0.0\n    for i in range(v.shape[0]):\n"
                          "        t = 2.0 * (np.float64(v[i]) - k)")
    assert edited != text
    shared.write_text(edited)
    # recompiled: the first row of the block is summed by the edited helper (doubled deviations:
    # 4 * 1.25 + 1), the second in the forward's fused loop (1.25 + 1)
    assert run() == (8.25, 0)
