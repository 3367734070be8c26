"""Start-up costs, each measured in a fresh interpreter: ``import normcore``, backend discovery, and
the first training step of a layer with the Numba kernels compiled from scratch (cold: an empty
NUMBA_CACHE_DIR) or loaded from Numba's on-disk cache (warm: a cache directory pre-warmed in
``setup``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from ._common import BACKENDS, QUICK, get_backend
from ._table import TABLE

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_first_call.py")

# Quick mode: one layer whose kernels compile in seconds. The full set compiles for minutes: the
# layers benchmarked since the start, then every other module of the layer table with asv shapes
# (appended, so the existing parameters keep their place).
_FIRST = ["BatchNorm2d", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm2d", "Dropout"]
FIRST_CALL_LAYERS = (["Dropout"] if QUICK else
                     _FIRST + [r.name for r in TABLE.LAYERS
                               if r.asv and r.is_module and r.name not in _FIRST])


def timeraw_import_normcore():
    """``import normcore``: the registry, functional layer and modules; no backend is imported."""
    return "import normcore"


def timeraw_list_backends():
    """``import normcore`` + ``normcore.list_backends()``, which reads metadata only (no backend
    is imported)."""
    return """
    import normcore
    normcore.list_backends()
    """


timeraw_import_normcore.timeout = 120
timeraw_list_backends.timeout = 120


def _first_call(backend: str, layer: str, cache_dir: str) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    proc = subprocess.run([sys.executable, SCRIPT, backend, layer], env=env, capture_output=True,
                          text=True, timeout=590)
    if proc.returncode != 0:
        raise RuntimeError(f"first-call script failed ({proc.returncode}):\n{proc.stderr}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["first_call"])


class _FirstCall:
    params = [list(BACKENDS), FIRST_CALL_LAYERS]
    param_names = ["backend", "layer"]
    timeout = 600
    unit = "seconds"

    def setup(self, backend: str, layer: str) -> None:
        get_backend(backend)  # skips backends that cannot run here


class NumbaColdFirstCall(_FirstCall):
    """First forward + backward in a fresh process with an empty Numba cache: JIT compilation."""

    def track_cold_first_call(self, backend: str, layer: str) -> float:
        cache = tempfile.mkdtemp(prefix="normcore-asv-cold-")
        try:
            return _first_call(backend, layer, cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    track_cold_first_call.unit = "seconds"


class NumbaWarmFirstCall(_FirstCall):
    """First forward + backward in a fresh process whose Numba cache was filled in ``setup``."""

    def setup(self, backend: str, layer: str) -> None:
        super().setup(backend, layer)
        self.cache = tempfile.mkdtemp(prefix="normcore-asv-warm-")
        _first_call(backend, layer, self.cache)  # compiles and writes the cache

    def teardown(self, backend: str, layer: str) -> None:
        # asv_runner runs teardown after a skipped setup too: there may be no cache.
        cache = getattr(self, "cache", None)
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)

    def track_warm_first_call(self, backend: str, layer: str) -> float:
        return _first_call(backend, layer, self.cache)

    track_warm_first_call.unit = "seconds"
