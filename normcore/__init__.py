"""normcore: torch.nn normalization layers on pluggable array backends.

>>> import numpy as np, normcore
>>> ln = normcore.LayerNorm(4)
>>> y = ln(np.arange(8, dtype=np.float32).reshape(2, 4))
>>> dx = ln.backward(np.ones_like(y))
>>> ln.weight.grad.shape
(4,)
"""

from typing import Any

import numpy as np

from . import functional
from ._checks import DTypeError, ShapeError
from .backend import API_VERSION, Availability, Backend
from .modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    Dropout,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    Module,
    Parameter,
    RMSNorm,
)
from .registry import BackendError, get_backend, list_backends, register, use_backend
from .sync_batchnorm import SyncBatchNorm  # (mpi4py is imported at its first training forward)

__version__ = "0.1.0"

__all__ = [
    "API_VERSION", "Availability", "Backend", "BackendError", "DTypeError", "ShapeError",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d",
    "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm", "Dropout", "Module", "Parameter",
    "SyncBatchNorm",
    "functional", "get_backend", "list_backends", "register", "use_backend", "to_numpy",
    "__version__",
]


def to_numpy(arr: Any) -> np.ndarray:
    """Bring any array normcore returned (NumPy, CuPy, torch, JAX, array-api-strict, ...) to a
    NumPy array on the host."""
    if isinstance(arr, np.ndarray):
        return arr
    if hasattr(arr, "get"):  # CuPy
        return arr.get()
    if hasattr(arr, "copy_to_host"):  # Numba device array
        return arr.copy_to_host()
    if hasattr(arr, "__dlpack__"):  # torch tensors, JAX arrays, array-api-strict arrays, ...
        if getattr(arr, "requires_grad", False) and hasattr(arr, "detach"):
            arr = arr.detach()  # torch exports no tensor that autograd records
        try:
            return np.from_dlpack(arr, device="cpu")  # NumPy >= 2.1: a host copy if elsewhere
        except TypeError:
            return np.from_dlpack(arr)
        except (BufferError, ValueError, RuntimeError):
            pass  # e.g. a producer that cannot copy to the host itself: NumPy's protocols below
    return np.asarray(arr)
