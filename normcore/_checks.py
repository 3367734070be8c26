"""Input validation shared by the functional layer and the modules. Every message says what was
expected and what came."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import numpy as np

from ._interop import is_foreign, np_dtype, to_native
from ._parameter import Parameter
from .backend import Backend


class ShapeError(ValueError, RuntimeError):
    """A wrong shape. Both a ValueError and a RuntimeError, because torch raises either for these."""


class DTypeError(TypeError, RuntimeError):
    """A wrong dtype (integer input, or a dtype that differs from the parameters'). No silent casts."""


#: NumPy array subclasses whose meaning a kernel would drop: a mask, or matrix semantics.
_REFUSED = (np.ma.MaskedArray, np.matrix)


def as_input(x: Any, backend: Backend, name: str = "input") -> Any:
    """``x`` as a floating array of ``backend`` (NumPy input is moved to a GPU backend's device);
    a module's Parameter stands for its data, as torch's functional API takes an nn.Parameter."""
    if type(x) is np.ndarray:  # the usual case: the checks below, in fewer steps
        dtype = x.dtype
        if (dtype.kind == "f" and backend.is_native(x)
                and dtype in _dtype_set(tuple(backend.dtypes))):
            return x
    if isinstance(x, Parameter):
        x = x.data
    if type(x) is not np.ndarray and isinstance(x, _REFUSED):
        raise TypeError(f"{name} is a {type(x).__module__}.{type(x).__name__}, which normcore "
                        "does not take: a kernel would ignore its "
                        f"{'mask' if isinstance(x, np.ma.MaskedArray) else 'matrix semantics'}. "
                        "Pass a plain ndarray (np.ma.filled(x, value) or np.asarray(x))")
    if not backend.is_native(x):
        if not hasattr(x, "dtype") and not isinstance(x, (list, tuple, float, int)):
            raise TypeError(f"{name} must be an array, got {type(x).__name__}")
        if type(x) is not np.ndarray and is_foreign(x, backend):
            x = to_native(x, backend)[0]  # (a weight, a statistic, a gradient: no way back)
        else:
            x = backend.asarray(x)
    dtype = np_dtype(x.dtype)
    if dtype.kind != "f":
        raise DTypeError(f"{name} must have a floating dtype {_names(backend.dtypes)}, got {dtype} "
                         "(normcore does not cast silently)")
    if dtype not in _dtype_set(tuple(backend.dtypes)):
        raise DTypeError(f"{name} dtype {dtype} is not supported by backend {backend.name!r}, "
                         f"which takes {_names(backend.dtypes)}")
    return x


@functools.lru_cache(maxsize=64)
def _dtype_set(dtypes: tuple[Any, ...]) -> frozenset[np.dtype]:
    return frozenset(np.dtype(d) for d in dtypes)  # cached: this runs on every layer call


def check_dtype(dtype: Any, backend: Backend) -> np.dtype:
    """A layer's dtype: one the backend computes (float16/float32/float64 for the built-in ones)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a NumPy floating dtype, got {dtype!r}") from None
    if dt not in _dtype_set(tuple(backend.dtypes)):
        raise TypeError(f"dtype must be a floating dtype that backend {backend.name!r} computes "
                        f"({_names(backend.dtypes)}), got {dt}")
    return dt


def _names(dtypes: Any) -> str:
    return "/".join(np.dtype(d).name for d in dtypes)


def same_dtype(x: Any, other: Any, what: str) -> None:
    if other is not None and np_dtype(other.dtype) != np_dtype(x.dtype):
        raise DTypeError(f"input dtype {np_dtype(x.dtype)} does not match the {what} dtype "
                         f"{np_dtype(other.dtype)}; convert one of them (no silent cast)")


def vector(v: Any, backend: Backend, size: int, what: str, x: Any) -> Any:
    """An optional per-channel vector (weight, bias, running statistic) of ``size`` elements."""
    if v is None:
        return None
    if type(v) is type(x) and v.dtype == x.dtype and v.shape == (size,):
        return v  # the usual case, settled by x's checks (four of these run per BatchNorm call)
    v = as_input(v, backend, what)
    if tuple(v.shape) != (size,):
        raise ShapeError(f"{what} must have shape ({size},) to match the input's {size} channels, "
                         f"got {tuple(v.shape)}")
    same_dtype(x, v, what)
    return v


def is_number(value: Any) -> bool:
    """A real number, Python's or NumPy's (``np.float32(1e-5)`` is one, as for torch); not a bool."""
    if type(value) is float or type(value) is int:
        return True  # the usual case, without the ABC check below
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_eps(eps: float) -> float:
    """eps as a Python float: a finite number >= 0 (NumPy scalars too)."""
    if not is_number(eps) or not math.isfinite(eps):
        raise TypeError(f"eps must be a finite number, got {eps!r}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    return float(eps)


def check_momentum(momentum: float | None, allow_none: bool) -> float | None:
    """momentum as a Python float in [0, 1], or None where a cumulative average is allowed."""
    if momentum is None:
        if not allow_none:
            raise TypeError("momentum must be a number here; None (cumulative average) is "
                            "handled by the modules")
        return None
    if not is_number(momentum):
        raise TypeError(f"momentum must be a number or None, got {momentum!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return float(momentum)


def check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def normalized_shape_tuple(shape: Any) -> tuple[int, ...]:
    if type(shape) is tuple and shape and all(type(s) is int and s > 0 for s in shape):
        return shape  # the usual case (a module's own, checked once): no new tuple per call
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {shape!r}") \
            from None
    if len(shape) == 0:
        raise ValueError("normalized_shape must have at least one dimension, got ()")
    return tuple(check_positive_int(s, "every normalized_shape entry") for s in shape)


def numel(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))
