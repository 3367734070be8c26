"""The numba-cuda backend on a real GPU (CuPy arrays on the device), and its clear refusal where
there is none. The GPU tests skip without CuPy and a CUDA device; the conformance kit covers the
kernels under Numba's CUDA simulator in CI (`make test-cudasim`)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import normcore
from normcore.testing import assert_close

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _gpu_status():
    rows = {r.name: r for r in normcore.list_backends(check=True)}
    return rows.get("numba-cuda")


def _real_gpu() -> bool:
    status = _gpu_status()
    return bool(status and status.available and not SIMULATOR)


needs_gpu = pytest.mark.skipif(not _real_gpu(), reason="needs CuPy and a CUDA device")


@pytest.mark.skipif(_real_gpu() or SIMULATOR, reason="a GPU (or the simulator) is present")
def test_without_a_gpu_selection_fails_clearly_and_nothing_else_breaks():
    status = _gpu_status()
    assert status is not None and status.status == "unavailable" and status.device == "gpu"
    assert status.reason  # names what is missing (CuPy, a device, numba-cuda)
    with pytest.raises(normcore.BackendError, match="not available"):
        normcore.LayerNorm(4, backend="numba-cuda")
    assert normcore.LayerNorm(4)(np.ones((2, 4), np.float32)).shape == (2, 4)


@needs_gpu
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_layers_on_device_match_the_reference(dtype):
    import cupy

    rng = np.random.default_rng(0)
    for make, shape in ((lambda b: normcore.BatchNorm2d(8, backend=b, dtype=dtype), (4, 8, 9, 7)),
                        (lambda b: normcore.LayerNorm(257, backend=b, dtype=dtype), (33, 257)),
                        (lambda b: normcore.GroupNorm(4, 8, backend=b, dtype=dtype), (3, 8, 25)),
                        (lambda b: normcore.RMSNorm(1024, backend=b, dtype=dtype), (5, 1024))):
        gpu, ref = make("numba-cuda"), make("numpy")
        x = rng.normal(1, 2, size=shape).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        y = gpu(cupy.asarray(x))
        assert isinstance(y, cupy.ndarray)
        assert isinstance(gpu.weight.data, cupy.ndarray)  # parameters live on the device
        dx = gpu.backward(cupy.asarray(dy))
        assert_close(y.get(), ref(x), dtype, "forward")
        assert_close(dx.get(), ref.backward(dy), dtype, "backward")
        assert_close(normcore.to_numpy(gpu.weight.grad), ref.weight.grad, dtype, "weight.grad")


@needs_gpu
def test_numpy_and_torch_cuda_inputs_are_accepted():
    import cupy

    ln = normcore.LayerNorm(16, backend="numba-cuda")
    x = np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32)
    y_from_host = ln(x)  # copied to the device
    assert isinstance(y_from_host, cupy.ndarray)
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    y_from_torch = ln(torch.tensor(x, device="cuda"))
    np.testing.assert_allclose(normcore.to_numpy(y_from_torch), normcore.to_numpy(y_from_host),
                               rtol=1e-6)
