"""Helpers of the ``array-api`` backends: the library table, host copies and the shifted
two-pass statistics every kernel with statistics shares."""

from __future__ import annotations

import importlib.metadata
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


def library_version(lib: Library) -> str:
    """"torch 2.13.0, array-api-compat 1.16.0" from installed metadata (nothing imported)."""
    for dist in lib.distributions:
        try:
            v = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        try:
            return f"{dist} {v}, array-api-compat {importlib.metadata.version('array-api-compat')}"
        except importlib.metadata.PackageNotFoundError:
            return f"{dist} {v}"
    return ""


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


def moments(xp: Any, xa: Any, axes: tuple[int, ...], sample: Any | None,
            scaled: bool) -> tuple[Any, Any, Any, Any]:
    """Shifted two-pass statistics over ``axes`` (keepdims). Returns ``(mean, xc, s, q)``: the
    mean, ``xc = x - mean``, and the variance as ``s * s * q`` with ``q = mean((xc / s)**2)``.

    ``mean = t + mean(x - t)`` with ``t`` a finite sample of each row (0 where the sample is not
    finite, so NaN and infinities spread as in the reference); ``sample=None`` is RMS: the mean
    is the number 0. A constant row gives a mean equal to its value, hence exact zeros.
    ``scaled`` (the float32 path, without float64): ``s`` is each row's largest finite
    ``|x - t|`` (within [1, 2**80]), so that neither the sum nor the squares overflow where float64 sums
    would not (``|x|`` up to ~1e37); otherwise ``s`` is the number 1."""
    if sample is None:
        shift, d = 0.0, xa
    else:
        shift = xp.where(xp.isfinite(sample), sample, xp.zeros_like(sample))
        d = xa - shift
    s: Any = 1.0
    if scaled:
        big = xp.max(xp.where(xp.isfinite(d), xp.abs(d), xp.zeros_like(d)), axis=axes,
                     keepdims=True)
        s = xp.clip(big, 1.0, 2.0**80)  # 1 / s stays normal: XLA flushes subnormals to zero
        d = d / s
    mean = 0.0 if sample is None else shift + s * xp.mean(d, axis=axes, keepdims=True)
    xc = xa - mean if sample is not None else xa
    r = xc / s if scaled else xc
    return mean, xc, s, xp.mean(r * r, axis=axes, keepdims=True)


def normalized(xp: Any, xc: Any, s: Any, q: Any, eps: float, scaled: bool) -> Any:
    """``(x - mean) / sqrt(var + eps)`` from :func:`moments`' parts, never forming ``var``
    (whose float32 square may overflow, or its reciprocal square root become subnormal)."""
    inv = 1.0 / xp.sqrt(q + eps / (s * s))
    return (xc / s) * inv if scaled else xc * inv
