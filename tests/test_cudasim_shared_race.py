"""The CUDA backend's simulator reductions survive the simulator's racy shared-array allocation.

Under ``NUMBA_ENABLE_CUDASIM=1`` every CUDA thread is a Python thread, and the first
``cuda.shared.array`` call of a launch at a call site allocates with an unlocked get-then-set.
Two threads arriving together can each get a buffer of their own; a reduction through it is then
wrong (CI once failed that way, on ``rows:3x5`` backward). This widens the window (a GIL release
right after the simulator's ``np.empty``) in a child process and checks that the row kernels,
whose emulated reductions allocate under a lock, still give the reference's values. Without the
lock nearly every run fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba.cuda.simulator")

_CHILD = textwrap.dedent(
    """
    import time, types
    import numpy as np
    from numba.cuda.simulator import kernelapi

    def empty(*args, **kwargs):
        out = np.empty(*args, **kwargs)
        time.sleep(0)  # give the GIL to the next simulated thread mid-allocation
        return out

    kernelapi.np = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np)
                                            if not k.startswith("__")})
    kernelapi.np.empty = empty

    import normcore
    from normcore.testing import cases

    backend = normcore.get_backend("numba-cuda")
    for _ in range(6):
        cases._rows_case((3, 5), "float32", 0, True, backend)
        cases._rows_case((3, 5), "float32", 1, False, backend)
    print("ok")
    """
)


def test_simulated_reductions_allocate_shared_buffers_safely() -> None:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env.pop("NORMCORE_TEST_CUDASIM_SHUFFLE", None)
    run = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("ok")
