"""The numba backend and numba's threading layer: started before the first kernel, and kernels
called from several Python threads at once run correctly whichever layer numba loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("numba")

import normcore  # noqa: E402
from normcore_numba import backend as numba_backend  # noqa: E402

CONCURRENT = """
import threading, numpy as np, numba, normcore
rng = np.random.default_rng(0)
xs = [rng.standard_normal((8, 64, 16, 16)).astype(np.float32) for _ in range(4)]  # parallel path
want = []
for x in xs:
    ref = normcore.GroupNorm(8, 64, backend="numpy")
    y = ref(x)
    want.append((y, ref.backward(y)))
bad = []

def work(i):
    layer = normcore.GroupNorm(8, 64, backend="numba")
    for _ in range(10):
        y = layer(xs[i])
        dx = layer.backward(y)
        if not (np.allclose(y, want[i][0], atol=1e-4) and np.allclose(dx, want[i][1], atol=1e-3)):
            bad.append(i)

threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(numba.threading_layer(), sorted(set(bad)))
"""


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_layers_called_from_several_threads_at_once(layer):
    """numba's workqueue layer (its fallback where neither OpenMP nor TBB loads) aborts the
    process when two threads run parallel regions at once; the backend then runs its kernels
    one at a time. Other layers run them side by side."""
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    env.pop("NORMCORE_NUMBA_SERIAL_MAX", None)
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(CONCURRENT)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    name, bad = run.stdout.split(maxsplit=1)
    assert bad.strip() == "[]"
    if layer == "workqueue":
        assert name == "workqueue"


def test_kernels_run_unguarded_once_the_layer_is_threadsafe(rng):
    """The guard costs a call only until the layer is up; with a threadsafe layer the class gets
    its own methods back (no wrapper on the per-call path)."""
    import numba

    x = rng.normal(size=(4, 6)).astype(np.float32)
    normcore.LayerNorm(6, backend="numba")(x)
    if numba.threading_layer() == "workqueue":
        pytest.skip("this process runs numba's workqueue layer: the guard stays")
    cls = numba_backend.NumbaBackend
    for name, method in numba_backend._unguarded.items():
        assert getattr(cls, name) is method, name
