"""The array-api backends (backends/normcore_xp): what the conformance kit does not see.

The kit (normcore/testing) runs on every available array-api backend; the whole suite runs on
them only when NORMCORE_TEST_BACKEND names them (tests/conftest.py). These tests are cheap.
"""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys

import numpy as np
import pytest

import normcore
from normcore import DTypeError

pytest.importorskip("array_api_compat")

from normcore_xp import _xp  # noqa: E402
from normcore_xp.backend import ArrayAPIBackend  # noqa: E402

LIBS = [lib for lib in ("numpy", "array_api_strict", "torch", "jax")
        if all(importlib.util.find_spec(m) for m in _xp.LIBRARIES[lib].requires)]


@pytest.fixture(params=LIBS)
def be(request) -> ArrayAPIBackend:
    return ArrayAPIBackend(request.param)


def test_listing_imports_no_array_library():
    code = ("import sys, normcore, normcore_xp; normcore.list_backends(); "
            "normcore.list_backends(check=True); "
            "print(sorted(m for m in ('torch', 'jax', 'array_api_strict', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_metadata_and_availability():
    rows = {r.name: r for r in normcore.list_backends()}
    for lib, info in _xp.LIBRARIES.items():
        row = rows[info.backend_name]
        assert row.device == ("gpu" if lib == "cupy" else "cpu")
        assert row.array_library == lib
    for lib in LIBS:
        assert normcore.get_backend(_xp.LIBRARIES[lib].backend_name).name == \
            _xp.LIBRARIES[lib].backend_name
    chosen, _ = normcore.registry.resolve(None)
    assert not chosen.name.startswith("array-api")  # priority -10: never the automatic choice


def test_a_missing_library_is_named(monkeypatch):
    monkeypatch.setitem(_xp.LIBRARIES, "nolib", _xp.Library(
        "array-api-nolib", ("no_such_lib_xyz",), "no_such_lib_xyz", "no_such_lib_xyz.Array",
        ("no-such-lib-xyz",)))
    availability = ArrayAPIBackend("nolib").is_available()
    assert not availability and availability.reason == "no-such-lib-xyz is not installed"


def test_arrays_are_the_librarys_and_come_back(be):
    x = be.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    w = be.full((3,), 2.0, np.float32)
    assert be.is_native(x) and be.is_native(w) and not be.is_native([1.0])
    assert be.numpy_dtype(x.dtype) == np.float32
    np.testing.assert_array_equal(be.to_numpy(x), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(normcore.to_numpy(w), [2.0, 2.0, 2.0])
    assert be.to_numpy(be.copy(x)).tolist() == be.to_numpy(x).tolist()
    be.synchronize()
    clone = pickle.loads(pickle.dumps(be))
    assert clone.library == be.library and clone.is_native(x)


def test_dtypes_the_library_cannot_hold_are_refused(be):
    names = {np.dtype(d).name for d in be.dtypes}
    for name in ("float16", "float64"):
        if name not in names:
            with pytest.raises(DTypeError, match=name):
                be.asarray(np.zeros(2, name))
    assert ("float16" in names) == (be.library != "array_api_strict")
    assert ("float64" in names) == (be.library != "jax" or _xp.jax_x64())


def test_constant_rows_give_exact_zeros(be):
    x = np.full((2, 3, 5), 0.1, np.float32)
    m, v = be.channel_moments(be.asarray(x))
    assert be.to_numpy(m).tolist() == [np.float32(0.1)] * 3 and not be.to_numpy(v).any()
    y, _, var = be.group_normalize(be.asarray(x.reshape(2, 3, 5, 1)), None, None, 1e-5, True)
    assert not be.to_numpy(y).any() and not be.to_numpy(var).any()
    y2, _, _ = be.standardize_rows(be.asarray(x.reshape(6, 5)), 1e-5, 1, True)
    assert not be.to_numpy(y2).any()


def test_other_libraries_arrays_are_brought_to_x(be):
    """A NumPy weight, mean and var with the library's x (normally the core hands over its own)."""
    ref = normcore.get_backend("numpy")
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    mean, var = ref.channel_moments(x)
    w = np.array([1.0, 2.0, 3.0], np.float32)
    got = be.channel_normalize(be.asarray(x), mean, var, 1e-5, w, None)
    np.testing.assert_allclose(be.to_numpy(got), ref.channel_normalize(x, mean, var, 1e-5, w, None),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scaled", [False, True])
def test_float32_moments_scheme(scaled):
    """The shifted (and, without float64, scaled) two-pass statistics in float32 alone: a mean of
    1e4 keeps its variance, |x| ~ 1e37 does not overflow, an infinite first sample gives an
    infinite mean, not NaN."""
    import array_api_compat.numpy as xp

    rng = np.random.default_rng(1)
    x = rng.normal(1e4, 1.0, size=(3, 4099)).astype(np.float32)
    mean, _, s, q = _xp.moments(xp, x, (1,), x[:, :1], scaled)
    var = s * (s * q)
    np.testing.assert_allclose(var.ravel(), x.astype(np.float64).var(axis=1), rtol=1e-4)
    big = (rng.normal(size=(2, 64)) * 1e37).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, xc, s, q = _xp.moments(xp, big, (1,), big[:, :1], scaled)
        y = _xp.normalized(xp, xc, s, q, 0.0, scaled)
    if scaled:
        want = (big - big.astype(np.float64).mean(1, keepdims=True)) / big.astype(np.float64).std(
            1, keepdims=True)
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    x[0, 0] = np.inf
    with np.errstate(invalid="ignore"):
        mean, *_ = _xp.moments(xp, x, (1,), x[:, :1], scaled)
    assert np.isposinf(mean[0, 0]) and np.isfinite(mean[1:]).all()


@pytest.mark.skipif("torch" not in LIBS, reason="torch is not installed")
def test_a_torch_device_instance_puts_its_arrays_there():
    import torch

    be = ArrayAPIBackend("torch", array_device="cpu", name="array-api-torch-cpu")
    w = be.full((2,), 1.0, np.float32)
    assert isinstance(w, torch.Tensor) and w.device.type == "cpu" and be.name == "array-api-torch-cpu"


def test_jax_synchronize_waits_for_the_last_result():
    """JAX dispatches asynchronously: synchronize() blocks on this thread's last kernel result, so
    a bench or asv timing measures the computation, not the dispatch."""
    pytest.importorskip("jax")


    be = normcore.get_backend("array-api-jax")
    y, _ = normcore.functional.layer_norm(be.asarray(np.ones((64, 32), np.float32)), 32, backend=be)
    assert be._last.value is not None
    be.synchronize()
    assert be._last.value is None
