"""Backend contract version 2 (issue #30): immutable arrays, synchronize(), array library apart
from device, version-1 plugins, and listing that imports no backend."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import normcore
from normcore import config, registry
from normcore import functional as F
from normcore.backend import KERNELS, OPTIONAL_KERNELS
from normcore.testing import verify
from normcore_numpy.backend import NumpyBackend


def _frozen(value):
    if isinstance(value, tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, np.ndarray):
        value = value.view()
        value.flags.writeable = False
    return value


class ImmutableBackend(NumpyBackend):
    """The reference on arrays nobody may write, standing in for an immutable library (JAX):
    every array it makes or returns is read-only, and ``mutable`` is False."""

    name = "immutable-test"
    mutable = False

    def asarray(self, obj, dtype=None):
        return _frozen(np.array(obj, dtype=dtype))


for _name in KERNELS + OPTIONAL_KERNELS:
    if hasattr(NumpyBackend, _name):
        def _wrapped(self, *args, _name=_name):
            return _frozen(getattr(NumpyBackend, _name)(self, *args))
        setattr(ImmutableBackend, _name, _wrapped)


@pytest.fixture
def clean_registry():
    registry.refresh()
    yield
    registry.refresh()


def test_an_immutable_backend_passes_the_whole_kit(clean_registry):
    registry.register("immutable-test", ImmutableBackend, priority=-100)
    results = verify("immutable-test", quick=True)
    failed = [r for r in results if not r.ok]
    assert not failed, failed[:3]
    ran = {r.id for r in results if not r.skipped}
    assert "state:functional-running:batch_norm:momentum=0.1" in ran
    assert "state:dropout-inplace" in ran


def test_immutable_running_statistics_come_back_in_saved(clean_registry):
    be = ImmutableBackend()
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    rm, rv = be.asarray(np.zeros(3, np.float32)), be.asarray(np.ones(3, np.float32))
    y, saved = F.batch_norm(x, rm, rv, training=True, backend=be)
    np.testing.assert_array_equal(rm, 0)  # untouched: it cannot be written
    np.testing.assert_allclose(saved.running.mean, 0.1 * x.mean(0), rtol=1e-6)
    bn = normcore.BatchNorm1d(3, backend=be)
    bn(x)
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(0), rtol=1e-6)
    assert int(bn.num_batches_tracked) == 1


def test_a_read_only_numpy_target_on_a_mutable_backend_is_still_refused():
    rm = np.zeros(3, np.float32)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is read-only"):
        F.batch_norm(np.ones((4, 3), np.float32), rm, np.ones(3, np.float32), training=True,
                     backend="numpy")


class _V1(NumpyBackend):
    name = "v1-test"
    api_version = 1


def test_a_version_1_backend_still_works_with_a_deprecation_warning(clean_registry):
    registry.register("v1-test", _V1, priority=-100)
    with pytest.warns(DeprecationWarning, match="contract version 1.*synchronize"):
        be = normcore.get_backend("v1-test")
    y, _ = F.layer_norm(np.ones((2, 4), np.float32), 4, backend=be)
    assert y.shape == (2, 4)


class _JaxLikeCPU(NumpyBackend):
    name = "cpu-other-arrays"
    array_library = "jax"


def test_automatic_selection_takes_only_numpy_array_cpu_backends(clean_registry, monkeypatch):
    registry.register("cpu-other-arrays", _JaxLikeCPU, priority=1000)
    registry._entry_points()["cpu-other-arrays"].info["array_library"] = "jax"
    assert normcore.get_backend(None).name != "cpu-other-arrays"
    monkeypatch.setattr(config.settings, "backend_priority", tuple("cpu-other-arrays,numpy".split(",")))
    with pytest.warns(UserWarning, match="never picks"):
        chosen, _ = registry.default_backend()
    assert chosen.name == "numpy"


def test_synchronize_is_part_of_every_backend():
    for name in ("numpy", "numba"):
        assert normcore.get_backend(name).synchronize() is None


def test_listing_imports_no_backend():
    code = """
import sys, normcore
rows = normcore.list_backends()
heavy = [m for m in ("numba", "jax", "torch", "cupy", "array_api_strict",
                     "normcore_numba.backend", "normcore_numpy.backend", "normcore_cuda.backend",
                     "normcore_xp.backend") if m in sys.modules]
print(sorted(r.status for r in rows if r.name in ("numba", "numpy")), heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['installed', 'installed'] []", out.stdout


def test_check_loads_and_reports():
    rows = {r.name: r for r in normcore.list_backends(check=True)}
    assert rows["numpy"].status == "available" and rows["numpy"].array_library == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert {r.name: r.status for r in normcore.list_backends()}["numpy"] == "available"


def test_an_immutable_backend_still_writes_the_callers_writable_host_arrays():
    """torch's in-place semantics hold for the caller's arrays whatever the backend computes on:
    array-api-jax (immutable JAX arrays) updates NumPy running statistics it was given."""
    pytest.importorskip("jax")
    be = normcore.get_backend("array-api-jax")
    assert not be.mutable
    x = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, saved = F.batch_norm(x, rm, rv, training=True, backend=be)
    want_m, want_v = np.zeros(3, np.float32), np.ones(3, np.float32)
    F.batch_norm(x, want_m, want_v, training=True, backend="numpy")
    np.testing.assert_allclose(rm, want_m, rtol=1e-6)
    np.testing.assert_allclose(rv, want_v, rtol=1e-6)
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is read-only"):
        F.batch_norm(x, ro, rv, training=True, backend=be)


def test_an_immutable_backend_writes_torch_running_statistics_in_place():
    torch = pytest.importorskip("torch")
    pytest.importorskip("jax")
    x = torch.randn(6, 3)
    rm, rv = torch.zeros(3), torch.ones(3)
    want_m, want_v = torch.zeros(3), torch.ones(3)
    torch.nn.functional.batch_norm(x, want_m, want_v, training=True)
    y, _ = F.batch_norm(x, rm, rv, training=True, backend="array-api-jax")
    assert type(y) is torch.Tensor
    torch.testing.assert_close(rm, want_m)
    torch.testing.assert_close(rv, want_v)
