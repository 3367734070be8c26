"""Helpers of the ``array-api`` backends: the library table, host copies and the shifted
two-pass centring every kernel with statistics shares."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

FLOATS = ("float16", "float32", "float64")


@dataclass(frozen=True)
class Library:
    """One array library an :class:`ArrayAPIBackend` can compute with."""

    backend_name: str  # the registry name
    requires: tuple[str, ...]  # modules that must be importable (the first is the library)
    namespace: str  # the Array API namespace module
    array_type: str  # "module.Class" of its arrays
    distributions: tuple[str, ...]  # distribution names, for version() and messages
    device: str = "cpu"


LIBRARIES: dict[str, Library] = {
    "numpy": Library("array-api", ("numpy",), "array_api_compat.numpy", "numpy.ndarray", ("numpy",)),
    "array_api_strict": Library("array-api-strict", ("array_api_strict",), "array_api_strict",
                                "array_api_strict._array_object.Array", ("array-api-strict",)),
    "torch": Library("array-api-torch", ("torch",), "array_api_compat.torch", "torch.Tensor",
                     ("torch",)),
    "jax": Library("array-api-jax", ("jax", "jaxlib"), "jax.numpy", "jax.Array", ("jax",)),
    "cupy": Library("array-api-cupy", ("cupy",), "array_api_compat.cupy", "cupy.ndarray",
                    ("cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x"), device="gpu"),
}


def jax_x64() -> bool:
    """Whether JAX holds float64 now (read without importing JAX when it is not imported yet)."""
    jax = sys.modules.get("jax")
    if jax is None:
        return os.environ.get("JAX_ENABLE_X64", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(jax.dtypes.canonicalize_dtype(np.float64) == np.float64)


def host(obj: Any) -> np.ndarray:
    """Any array (or nested sequence) as a NumPy array on the host: DLPack where NumPy's
    ``asarray`` cannot read the object (array-api-strict), asking the producer for a host copy."""
    if isinstance(obj, np.ndarray):
        return obj
    if hasattr(obj, "__dlpack__"):
        try:
            return np.from_dlpack(obj, device="cpu")  # NumPy >= 2.1
        except TypeError:
            return np.from_dlpack(obj)
    return np.asarray(obj)


def centre(xp: Any, xa: Any, axes: tuple[int, ...], sample: Any) -> tuple[Any, Any]:
    """Shifted two-pass centring over ``axes`` (keepdims): ``mean = s + mean(x - s)`` with ``s``
    a finite sample of each row (0 where the sample is not finite, so NaN and infinities spread
    as in the reference); returns ``(mean, x - mean)``. A constant row gives exactly zeros."""
    shift = xp.where(xp.isfinite(sample), sample, xp.zeros_like(sample))
    mean = shift + xp.mean(xa - shift, axis=axes, keepdims=True)
    return mean, xa - mean
