"""The numba backend and numba's threading layer (normcore_numba._layer): kernels called from
several Python threads at once, or in a child forked after the layer started, run correctly
whichever layer numba loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("numba")

import normcore  # noqa: E402
from normcore_numba import _layer  # noqa: E402

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
    """The guard costs a call only until the layer is settled; with a threadsafe layer the class
    gets its own methods back (no wrapper on the per-call path)."""
    import numba

    x = rng.normal(size=(4, 6)).astype(np.float32)
    normcore.LayerNorm(6, backend="numba")(x)
    if numba.threading_layer() == "workqueue":
        pytest.skip("this process runs numba's workqueue layer: the guard stays")
    assert _layer._guarded
    for cls, originals in _layer._guarded:
        for name, method in originals.items():
            assert getattr(cls, name) is method, name


FORK = """
import os, sys, warnings, numpy as np, numba, normcore
x = np.random.default_rng(0).standard_normal((8, 64, 16, 16)).astype(np.float32)  # parallel path
ref = normcore.GroupNorm(8, 64, backend="numpy")
want = ref(x)
layer = normcore.GroupNorm(8, 64, backend="numba")
assert np.allclose(layer(x), want, atol=1e-4)  # the parent starts the layer
pid = os.fork()
if pid == 0:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = all(np.allclose(normcore.GroupNorm(8, 64, backend="numba")(x), want, atol=1e-4)
                 for _ in range(3))
    print("child", ok, len([w for w in caught if "forked" in str(w.message)]), flush=True)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print("parent", numba.threading_layer(), os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_after_the_layer_started_runs_its_kernels():
    """GNU OpenMP does not survive fork and numba ends such a child at its first parallel
    region; the backend runs the child's kernels on one thread instead, and says so once."""
    env = dict(os.environ)
    env.pop("NORMCORE_NUMBA_SERIAL_MAX", None)
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(FORK)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = dict(line.split(maxsplit=1) for line in run.stdout.splitlines())
    layer, child_exit = lines["parent"].split()
    assert child_exit == "0", run.stdout + run.stderr[-2000:]
    ok, warned = lines["child"].split()
    assert ok == "True"
    from numba.np.ufunc import omppool

    gnu_omp = layer == "omp" and getattr(omppool, "openmp_vendor", "GNU") == "GNU"
    assert warned == ("1" if gnu_omp else "0")
