"""Run as a script in a fresh interpreter: time the first training step (forward + backward) of one
layer on one backend, i.e. kernel import + JIT compilation or on-disk cache load + the run itself.

    python _first_call.py BACKEND LAYER    ->  prints {"first_call": seconds, "second_call": ...}

The caller sets NUMBA_CACHE_DIR (an empty directory: cold; a pre-warmed one: warm). Importing
normcore and building the layer happen before the clock starts (import time is its own benchmark).
A layer not listed in ``LAYERS`` runs its small test configuration from normcore/layers.py.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
import time

import numpy as np

# Small inputs: the first call is dominated by compilation, not by the data.
LAYERS = {
    "BatchNorm2d": ((4, 8, 6, 6), lambda nc, be: nc.BatchNorm2d(8, backend=be)),
    "LayerNorm": ((16, 64), lambda nc, be: nc.LayerNorm(64, backend=be)),
    "RMSNorm": ((16, 64), lambda nc, be: nc.RMSNorm(64, backend=be)),
    "GroupNorm": ((4, 8, 6, 6), lambda nc, be: nc.GroupNorm(4, 8, backend=be)),
    "InstanceNorm2d": ((4, 8, 6, 6), lambda nc, be: nc.InstanceNorm2d(8, backend=be)),
    "Dropout": ((16, 64), lambda nc, be: nc.Dropout(0.1, seed=0, backend=be)),
}


def _from_table(layer_name: str):
    """(shape, make) from the row's test configuration in this working tree's layer table."""
    path = pathlib.Path(__file__).resolve().parents[2] / "normcore" / "layers.py"
    spec = importlib.util.spec_from_file_location("_normcore_layer_table", path)
    table = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = table
    spec.loader.exec_module(table)
    row = table.by_name(layer_name)
    kwargs, shape = row.test
    return shape, lambda nc, be: getattr(nc, row.name)(**kwargs, **row.extra, backend=be)


def main(backend_name: str, layer_name: str) -> None:
    import normcore

    backend = normcore.get_backend(backend_name)
    shape, make = LAYERS[layer_name] if layer_name in LAYERS else _from_table(layer_name)
    layer = make(normcore, backend_name)
    x = backend.asarray(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    dy = backend.asarray(np.ones(shape, dtype=np.float32))
    sync = _sync(backend)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        layer(x)
        layer.backward(dy)
        sync()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"first_call": times[0], "second_call": times[1]}))


def _sync(backend):
    if getattr(backend, "device", "cpu") == "cpu":
        return lambda: None
    try:
        import cupy

        return cupy.cuda.Device().synchronize
    except Exception:
        from numba import cuda

        return cuda.synchronize


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
