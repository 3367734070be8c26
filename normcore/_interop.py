"""Arrays of other libraries: "the output follows the input".

A call given an array that is not its backend's own (a torch tensor, a JAX array, any object
with ``__dlpack__``) runs on the chosen backend with the array brought over through DLPack
(no copy where the two libraries share the memory), and its results go back to the caller's
library the same way: a torch tensor in, a torch tensor out. An array on a device the backend
cannot reach (a CUDA tensor for a CPU backend) is refused with the backends that can take it.

>>> import numpy as np, normcore
>>> x, back = to_native(np.ones(3, np.float32), normcore.get_backend("numpy"))
>>> back is None
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

#: DLPack device types (dlpack.h): where an array's memory lives.
_CPU_DEVICES = {1, 3}  # kDLCPU, kDLCUDAHost (pinned host memory)
_DEVICE_NAMES = {1: "CPU", 2: "CUDA", 3: "CUDA host", 4: "OpenCL", 7: "Vulkan", 8: "Metal",
                 10: "ROCm", 13: "CUDA managed", 14: "oneAPI"}

Back = Callable[[Any], Any]


def np_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype of any library's dtype object (``torch.float32``, array-api-strict's
    ``float32``, NumPy's own): by its name when it is not NumPy's."""
    if isinstance(dtype, np.dtype):
        return dtype
    if isinstance(dtype, type):
        return np.dtype(dtype)
    return _dtype_named(str(dtype).rsplit(".", 1)[-1])  # (a string key: no cross-library ==)


@functools.lru_cache(maxsize=64)
def _dtype_named(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        raise TypeError(f"dtype {name} has no NumPy equivalent (normcore computes float16, "
                        "float32 and float64)") from None


def is_foreign(x: Any, backend: Any) -> bool:
    """An array of another library, which the backend takes through DLPack. (NumPy arrays are
    every backend's host arrays: ``backend.asarray`` takes them, as it always has.)"""
    return (hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray)
            and not backend.is_native(x))


def to_native(x: Any, backend: Any) -> tuple[Any, Back | None]:
    """``x`` as the backend's array and the function that brings results back to x's library
    (None when x needs no way back: the backend's own array, a list, a scalar)."""
    if not is_foreign(x, backend):
        return x, None
    if getattr(x, "requires_grad", False) and hasattr(x, "detach"):
        x = x.detach()  # torch refuses to export a tensor that autograd records
    device = _device_type(x)
    if backend.device == "cpu" and device not in _CPU_DEVICES:
        raise TypeError(f"the input is a {_library(x)} array on a "
                        f"{_DEVICE_NAMES.get(device, f'DLPack device {device}')} device, and "
                        f"backend {backend.name!r} runs on the CPU: choose a backend for that "
                        "device (backend='numba-cuda' for CUDA arrays, or an array-api backend "
                        "of that library), or move the array to the CPU")
    try:
        native = backend.from_dlpack(x)
    except (BufferError, TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"backend {backend.name!r} could not take a {_library(x)} "
                        f"{type(x).__name__} through DLPack ({exc}); convert it to a NumPy "
                        "array first") from exc
    return native, _returner(x, device in _CPU_DEVICES and backend.device != "cpu", backend)


def host_view(x: Any) -> np.ndarray | None:
    """A NumPy view of another library's array in host memory (None for device memory or an
    array that cannot be exported)."""
    if _device_type(x) not in _CPU_DEVICES:
        return None
    if getattr(x, "requires_grad", False) and hasattr(x, "detach"):
        x = x.detach()
    try:
        return np.from_dlpack(x)
    except (BufferError, TypeError, ValueError, RuntimeError):
        return None


def _device_type(x: Any) -> int:
    try:
        return int(x.__dlpack_device__()[0])
    except (AttributeError, TypeError, ValueError):
        return 1


def _library(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def _returner(x: Any, to_host: bool, backend: Any) -> Back:
    """The caller's library's ``from_dlpack`` (through array-api-compat, which knows how each
    library spells it); results of a device backend come to the host first when x was there."""
    import array_api_compat

    from_dlpack = array_api_compat.array_namespace(x).from_dlpack
    if to_host:
        return lambda y: from_dlpack(backend.to_numpy(y))
    return from_dlpack
