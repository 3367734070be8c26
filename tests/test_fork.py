"""Forked children of a process whose other threads were inside normcore at the fork.

A fork copies the locks of the process but only the forking thread: a lock another thread held
stays held in the child, by nobody. Every lock normcore and the numba backend take (the output
pool's, the threading layer's, the registry's) is re-created in the child (os.register_at_fork).
Each scenario runs in its own interpreter; its parent forks real children, gives each a few
seconds and kills one that has not finished, so a hang is a test failure, never a stuck run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

#: Seconds a child gets; each child runs kernels its parent compiled already (well under one).
CHILD_SECONDS = 10

HARNESS = f"""
import os, signal, sys, threading, time
import numpy as np

def fork_and_wait(child):
    '''Fork; the child runs child() and leaves with its return value (os._exit, at once). Gives
    the child's exit code, or "hung" for a child killed after {CHILD_SECONDS} s.'''
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        signal.alarm({CHILD_SECONDS} + 5)  # a lost parent must not leave a child behind
        code = 4
        try:
            code = child()
        except BaseException as exc:
            print("child raised", repr(exc), flush=True)
        sys.stdout.flush()
        os._exit(code)
    deadline = time.monotonic() + {CHILD_SECONDS}
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"
"""


def _run(script: str, **env: str) -> list[str]:
    """Run HARNESS + script in a fresh interpreter; its stdout lines."""
    environ = dict(os.environ, **env)
    for name in ("NORMCORE_NUMBA_POOL_MB", "NORMCORE_NUMBA_SERIAL_MAX", "NORMCORE_BACKEND"):
        if name not in env:
            environ.pop(name, None)
    code = textwrap.dedent(HARNESS) + textwrap.dedent(script)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=environ, timeout=240)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stdout}\n{run.stderr[-3000:]}"
    return run.stdout.splitlines()


POOL = """
import normcore
from normcore_numba import _pool

x = np.random.default_rng(0).standard_normal((128, 4096)).astype(np.float32)  # 2 MiB: pooled
want = normcore.LayerNorm(4096, backend="numpy")(x)
layer = normcore.LayerNorm(4096, backend="numba")
assert _pool.POOL.limit > 0 and np.allclose(layer(x), want, atol=1e-4)  # compiled, pool used

inside, leave = threading.Event(), threading.Event()
take = _pool.POOL._take

def held_take(nbytes):  # the pool's own code, paused while it holds the pool's lock
    inside.set()
    leave.wait()
    return take(nbytes)

_pool.POOL._take = held_take
busy = threading.Thread(target=layer, args=(x,))
busy.start()
inside.wait()
_pool.POOL._take = take
assert _pool.POOL._lock.locked()

def child():
    ok = all(np.allclose(normcore.LayerNorm(4096, backend="numba")(x), want, atol=1e-4)
             for _ in range(3))
    return 0 if ok else 3

print("child", fork_and_wait(child))
leave.set()
busy.join()
"""


def test_a_child_forked_while_a_thread_holds_the_pool_lock_allocates():
    """A thread of the parent is inside the output pool (holding its lock) at the fork; the
    child's layers take pooled outputs all the same."""
    assert _run(POOL) == ["child 0"]


KERNEL = """
import numba, normcore
from normcore_numba import _layer

x = np.random.default_rng(0).standard_normal((8, 64, 16, 16)).astype(np.float32)  # parallel
want = normcore.GroupNorm(8, 64, backend="numpy")(x)
layer = normcore.GroupNorm(8, 64, backend="numba")
assert np.allclose(layer(x), want, atol=1e-4)  # the layer is up, the kernel compiled
print("layer", numba.threading_layer())

def child():
    ok = all(np.allclose(normcore.GroupNorm(8, 64, backend="numba")(x), want, atol=1e-4)
             for _ in range(3))
    return 0 if ok else 3

# 1. a thread paused inside a kernel method of the backend (behind the same guard and lock)
inside, leave = threading.Event(), threading.Event()

class Busy:
    def kernel(self):
        inside.set()
        leave.wait()

_layer.guard(Busy, ["kernel"], lambda: None)
busy = threading.Thread(target=Busy().kernel)
busy.start()
inside.wait()
print("paused", fork_and_wait(child))
leave.set()
busy.join()

# 2. a thread running real kernels without pause while the parent forks children
stop = threading.Event()

def loop():
    while not stop.is_set():
        layer(x)

busy = threading.Thread(target=loop)
busy.start()
time.sleep(0.2)
codes = []
for _ in range(5):
    codes.append(fork_and_wait(child))
    time.sleep(0.05)
stop.set()
busy.join()
print("running", *codes)
"""


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_a_child_forked_while_a_thread_runs_a_kernel_runs_its_kernels(layer):
    """Under workqueue the kernels run one at a time behind a lock; a child forked while a
    thread of its parent held it ran no kernel ever again. Every layer: the child's kernels run
    (the default omp layer runs them on one thread in the child, see test_numba_threading_layer)."""
    lines = _run(KERNEL, NUMBA_THREADING_LAYER=layer)
    assert lines[1:] == ["paused 0", "running 0 0 0 0 0"], lines
    if layer == "workqueue":
        assert lines[0] == "layer workqueue"


REGISTRY = """
import importlib.metadata, types
import normcore
from normcore import registry

assert registry._discovered is None  # nothing looked for backends yet
inside, leave = threading.Event(), threading.Event()

def slow_entry_points(**kw):  # discovery, paused while it holds the registry's lock
    inside.set()
    leave.wait()
    return importlib.metadata.entry_points(**kw)

registry.metadata = types.SimpleNamespace(entry_points=slow_entry_points)
busy = threading.Thread(target=normcore.list_backends)
busy.start()
inside.wait()
registry.metadata = importlib.metadata
assert registry._lock.locked()

def child():
    x = np.ones((2, 4), np.float32)
    y = normcore.LayerNorm(4, backend="numpy")(x)
    return 0 if np.allclose(y, 0) and normcore.get_backend().name in ("numba", "numpy") else 3

print("child", fork_and_wait(child))
leave.set()
busy.join()
"""


def test_a_child_forked_during_backend_discovery_finds_its_backends():
    """A thread of the parent is discovering the backends (holding the registry's lock) at the
    fork; the child discovers and loads them itself."""
    assert _run(REGISTRY) == ["child 0"]
