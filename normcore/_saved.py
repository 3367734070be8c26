"""What a forward keeps for its backward (:class:`Saved`), and where the functional API's new
running statistics go (:func:`targets` before anything runs, :func:`commit` after): the
backend's own arrays through ``Backend.write``, host arrays with NumPy, or, for a backend of
immutable arrays, only ``saved.running``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _interop
from ._checks import as_input
from ._parameter import Parameter
from .backend import Backend

Array = Any


@dataclass
class Saved:
    """What a forward keeps for its backward: the canonical view of the input and its statistics."""

    op: str
    backend: Backend
    input_shape: tuple[int, ...]
    dtype: np.dtype
    x: Array = None  # the canonical view of the input (None for an empty input)
    mean: Array = None
    var: Array = None
    eps: float = 0.0
    weight: Array = None  # weight in the kernel's layout
    weight_shape: tuple[int, ...] | None = None
    has_bias: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: Brings results back to the caller's array library (None: the backend's arrays were given).
    back: Any = None
    #: The new running statistics a training forward computed (BatchNorm, InstanceNorm with
    #: running statistics), also when they could not be written in place (immutable arrays).
    running: RunningUpdate | None = None



_new = object.__new__


def quick_saved(op: str, backend: Backend, input_shape: tuple[int, ...], dtype: np.dtype, x: Array,
                mean: Array, var: Array, eps: float, weight: Array, weight_shape: Any,
                has_bias: bool, extra: dict[str, Any], running: RunningUpdate | None = None
                ) -> Saved:
    """``Saved(...)`` with every field given, without the dataclass's ``__init__`` (the layers'
    fast path builds one per call)."""
    s = _new(Saved)
    s.__dict__ = {"op": op, "backend": backend, "input_shape": input_shape, "dtype": dtype,
                  "x": x, "mean": mean, "var": var, "eps": eps, "weight": weight,
                  "weight_shape": weight_shape, "has_bias": has_bias, "extra": extra,
                  "back": None, "running": running}
    return s

@dataclass
class RunningUpdate:
    """New running statistics computed by a forward, for the caller to commit."""

    mean: Array
    var: Array


def targets(be: Backend, running_mean: Array | None, running_var: Array | None, updates: bool
             ) -> tuple[Any, Any] | None:
    """Before anything runs: where :func:`_commit` will write the caller's running statistics,
    refused when they cannot be written. None when nothing will be written (no update, or the
    backend's own immutable arrays: the new ones are ``saved.running``)."""
    if not updates or running_mean is None or running_var is None:
        return None
    found = [_target(be, value, what) for value, what in
             ((running_mean, "running_mean"), (running_var, "running_var"))]
    return None if None in found else (found[0], found[1])


def _target(be: Backend, value: Array, what: str) -> Any:
    """``("backend", array)`` written with ``be.write``, ``("host", ndarray)`` written with
    NumPy (a host array that a device backend copies), or None (the backend's immutable array)."""
    if isinstance(value, Parameter):
        value = value.data
    if be.is_native(value):
        if not be.mutable:
            return None
        kind, target, ok = "backend", value, be.writable(value)
    else:
        host = value if isinstance(value, np.ndarray) else _interop.host_view(value)
        if host is not None:  # the caller's memory, seen from the host
            kind, target, ok = "host", host, host.flags.writeable
        else:  # a device view of the caller's memory (DLPack)
            native = as_input(value, be, what)
            kind, target, ok = "backend", native, be.mutable and be.writable(native)
    if not ok:
        raise ValueError(f"{what} is read-only ({type(value).__module__}.{type(value).__name__}), "
                         "and this call updates it in place, as torch does: pass writable "
                         "arrays, write_running=False, or use a module (normcore.BatchNorm1d, "
                         "...), which keeps its own statistics")
    return kind, target


def commit(be: Backend, saved: Saved, update: RunningUpdate | None,
            targets: tuple[Any, Any] | None) -> None:
    """The functional API's torch semantics: running statistics are updated in place (the
    backend's own immutable arrays cannot be: the new ones are ``saved.running``)."""
    saved.running = update
    if update is None or targets is None:
        return
    for (kind, target), value in zip(targets, (update.mean, update.var), strict=True):
        if kind == "host":
            target[...] = be.to_numpy(value)
        else:
            be.write(target, value)
