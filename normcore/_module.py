"""The base of every layer: backend, training flag, parameters, buffers, state_dict, the
per-thread saved contexts and the layer lock, and the round trip of other libraries' arrays.
The layers themselves are in :mod:`normcore.modules`.

>>> import numpy as np, normcore
>>> sorted(normcore.LayerNorm(3).state_dict())
['bias', 'weight']
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from . import _fast, _interop, registry
from . import functional as F
from ._checks import check_dtype
from ._parameter import Parameter
from .backend import Backend

Array = Any

logger = logging.getLogger("normcore")

__all__ = ["Module", "IncompatibleKeys"]


class IncompatibleKeys(NamedTuple):
    """What :meth:`Module.load_state_dict` found, as torch returns it: the module's keys that the
    state dict lacked, and the state dict's keys that the module does not have."""

    missing_keys: list[str]
    unexpected_keys: list[str]

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return (f"IncompatibleKeys(missing_keys={self.missing_keys!r}, "
                f"unexpected_keys={self.unexpected_keys!r})")


class Module:
    """Base of every layer: backend, training flag, parameters, buffers and state_dict.

    Threads: a layer may be called from several threads at once. Each thread's forward keeps its
    own context for that thread's backward (threads never get each other's gradients), and the
    read-modify-write of running statistics, of ``num_batches_tracked`` and of gradient
    accumulation runs under the layer's lock, so no update is lost (concurrent training forwards
    of one BatchNorm run one after the other; evaluation and stateless layers run side by side).
    """

    #: The fast path's plans, by input (shape, dtype) (see :mod:`normcore._fast`); every
    #: attribute assignment starts an empty dict.
    _fast: Any = MappingProxyType({})

    def __init__(self, backend: str | Backend | None = None, dtype: Any = np.float32) -> None:
        self.backend: Backend
        self.backend, why = registry.resolve(backend)
        #: Why the backend was chosen, for the DEBUG log of each call (NORMCORE_LOG=debug).
        self._backend_why = f"chosen at construction: {why}"
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: backend %r selected (%s)", type(self).__name__, self.backend.name, why)
        self.dtype = check_dtype(dtype, self.backend)
        self.training = True
        self._params: dict[str, Parameter | None] = {}
        self._buffers: dict[str, Array | None] = {}
        self._new_locks()

    # -------------------------------------------------------------- threads
    def _new_locks(self) -> None:
        object.__setattr__(self, "_lock", threading.RLock())
        object.__setattr__(self, "_local", threading.local())

    @property
    def _saved(self) -> F.Saved | None:
        """What this thread's last forward kept for its backward (None after the backward)."""
        return getattr(self._local, "saved", None)

    @_saved.setter
    def _saved(self, saved: F.Saved | None) -> None:
        self._local.saved = saved

    def __getstate__(self) -> dict[str, Any]:
        # a copy or a pickle starts with locks, saved contexts and fast-path plans of its own
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_local", "_fast")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._new_locks()
        object.__setattr__(self, "_fast", {})

    # -------------------------------------------------------------- parameters and buffers
    def _param(self, name: str, shape: tuple[int, ...] | None, value: float) -> None:
        self._params[name] = None if shape is None else Parameter(
            self.backend.full(shape, value, self.dtype))

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: expose parameters and buffers as attributes.
        for store in ("_params", "_buffers"):
            d = self.__dict__.get(store)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        params, buffers = self.__dict__.get("_params"), self.__dict__.get("_buffers")
        if params is not None and name in params:
            if value is not None and not isinstance(value, Parameter):
                raise TypeError(f"{name} must be a normcore.Parameter or None")
            params[name] = value
        elif buffers is not None and name in buffers:
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)
        if name != "_saved":  # (anything else may change what a call does: no plan survives it)
            object.__setattr__(self, "_fast", {})

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        return ((k, p) for k, p in self._params.items() if p is not None)

    def parameters(self) -> Iterator[Parameter]:
        """The module's Parameters (weight, then bias), skipping absent ones."""
        return (p for _, p in self.named_parameters())

    def named_buffers(self) -> Iterator[tuple[str, Array]]:
        return ((k, b) for k, b in self._buffers.items() if b is not None)

    def buffers(self) -> Iterator[Array]:
        """The module's buffers (running statistics, ``num_batches_tracked``), skipping absent ones."""
        return (b for _, b in self.named_buffers())

    def reset_parameters(self) -> None:
        """Weights to ones and biases to zeros, in place: the same Parameter objects keep their
        identity (as torch's ``init.ones_``/``init.zeros_``), so an optimizer holding them keeps
        updating the module's own. Gradients are left as they are."""
        with self._lock:
            for name, p in self.named_parameters():
                p.data = self.backend.full(p.shape, 1.0 if name == "weight" else 0.0, self.dtype)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients: to None (torch's default) or to zeros."""
        for p in self.parameters():
            p.grad = None if set_to_none or p.grad is None else \
                self.backend.full(p.shape, 0.0, p.dtype)

    # -------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> Module:
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be boolean, got {mode!r}")
        self.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    # -------------------------------------------------------------- state_dict
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of parameters and buffers as NumPy arrays, under torch's key names."""
        out = {k: self.backend.to_numpy(p.data).copy() for k, p in self.named_parameters()}
        for k, b in self.named_buffers():
            out[k] = np.array(b) if k == "num_batches_tracked" else self.backend.to_numpy(b).copy()
        return out

    def _optional_keys(self) -> set[str]:
        return set()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True
                        ) -> IncompatibleKeys:
        """Load arrays (NumPy, or anything ``numpy.asarray`` takes, e.g. torch's CPU tensors).

        Everything is checked before anything is assigned: unknown keys, missing keys (when
        ``strict``) and shape mismatches raise RuntimeError and leave the module as it was.
        Returns the missing and unexpected keys, as torch does (both empty when ``strict``).

        >>> import numpy as np, normcore
        >>> normcore.LayerNorm(3).load_state_dict({"weight": np.ones(3)}, strict=False)
        IncompatibleKeys(missing_keys=['bias'], unexpected_keys=[])
        """
        expected = {k: tuple(p.shape) for k, p in self.named_parameters()}
        expected.update({k: tuple(np.shape(b)) for k, b in self.named_buffers()})
        unexpected = sorted(set(state_dict) - set(expected))
        missing = sorted(set(expected) - set(state_dict) - self._optional_keys())
        errors = []
        if strict and unexpected:
            errors.append(f"Unexpected key(s) in state_dict: {', '.join(unexpected)}")
        if strict and missing:
            errors.append(f"Missing key(s) in state_dict: {', '.join(missing)}")
        staged: dict[str, Any] = {}
        for key, shape in expected.items():
            if key in state_dict:
                try:
                    staged[key] = self._stage(key, state_dict[key], shape)
                except (TypeError, ValueError, OverflowError) as exc:
                    errors.append(f"{key}: {exc}")
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                               + "\n\t".join(errors))
        with self._lock:  # every value converted: nothing below can fail half way
            for key, value in staged.items():
                if key in self._params:
                    self._params[key].data = value
                else:
                    self._buffers[key] = value
        return IncompatibleKeys(missing, unexpected)

    def _stage(self, key: str, raw: Any, shape: tuple[int, ...]) -> Any:
        """``raw`` converted for ``key``: the module's dtype on its backend, or an int64 counter."""
        value = np.asarray(raw)
        if tuple(value.shape) != shape:
            raise ValueError(f"size mismatch for {key}: copying a param with shape "
                             f"{tuple(value.shape)}, the shape in current model is {shape}")
        if value.dtype.kind not in "fiu":
            raise TypeError(f"expected a real number array, got dtype {value.dtype}")
        if key == "num_batches_tracked":
            count = float(value) if value.dtype.kind == "f" else int(value)
            if not (math.isfinite(count) and count == int(count) and 0 <= count < 2**63):
                raise ValueError(f"expected a whole number in [0, 2**63), got {raw!r}")
            return np.array(int(count), dtype=np.int64)
        return self.backend.asarray(value.astype(self.dtype, copy=True))

    def to(self, backend: str | Backend) -> Module:
        """Move parameters, gradients and buffers to another backend (in place; returns self)."""
        target = registry.select(backend)
        with self._lock:
            self._move(target)
        return self

    def _move(self, target: Backend) -> None:
        for p in self.parameters():
            p.data = target.asarray(self.backend.to_numpy(p.data))
            if p.grad is not None:
                p.grad = target.asarray(self.backend.to_numpy(p.grad))
        for k, b in list(self.named_buffers()):
            if k != "num_batches_tracked":
                self._buffers[k] = target.asarray(self.backend.to_numpy(b))
        self.backend, self._backend_why = target, "moved there with .to()"
        self._new_locks()  # (no saved context survives the move, in any thread)

    # -------------------------------------------------------------- forward/backward
    def __call__(self, input: Array) -> Array:
        """The forward. An array of another library (a torch tensor, a JAX array: anything with
        ``__dlpack__``) runs on the layer's backend and its output, like the input gradient of
        the matching :meth:`backward`, comes back in that library."""
        debug = logger.isEnabledFor(logging.DEBUG)
        plans = None
        if type(input) is np.ndarray:
            plans = self._fast
            plan = None if debug else plans.get((input.shape, input.dtype))
            if plan is not None:
                y = plan(self, input)
                if y is not _fast.MISS:
                    self._local.back = None
                    return y
        if debug:
            logger.debug("%s forward on backend %r (%s)", type(self).__name__, self.backend.name,
                         self._backend_why)
        back = None
        native = input
        if plans is None and _interop.is_foreign(input, self.backend):
            native, back = _interop.to_native(input, self.backend)
        y = self.forward(native)
        self._local.back = back  # (after the forward: a failed one leaves the last way back)
        if back is None:
            if plans is not None:
                _fast.build(self, input, plans)
            return y
        return input if y is native else back(y)

    def _give_back(self, dx: Array) -> Array:
        """The input gradient in the library of this thread's last forward input."""
        back = getattr(self._local, "back", None)
        return dx if back is None else back(dx)

    def forward(self, input: Array) -> Array:
        raise NotImplementedError

    def backward(self, grad_output: Array) -> Array:
        """Input gradient of the last forward; accumulates ``weight.grad`` and ``bias.grad``."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s backward on backend %r (%s)", type(self).__name__, self.backend.name,
                         self._backend_why)
        local = self._local  # (this thread's saved context and way back)
        saved = getattr(local, "saved", None)
        if saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward(), or "
                               "twice for one forward: run forward first")
        dx, dweight, dbias = self._backward(grad_output, saved)
        if dweight is not None or dbias is not None:
            params = self._params
            with self._lock:
                for p, g in ((params.get("weight"), dweight), (params.get("bias"), dbias)):
                    if p is not None and g is not None:
                        p.grad = g if p.grad is None else p.grad + g
        local.saved = None
        back = getattr(local, "back", None)
        return dx if back is None else back(dx)

    def _backward(self, grad_output: Array, saved: F.Saved) -> tuple[Array, Array, Array]:
        raise NotImplementedError

    def _weight(self) -> Array | None:
        p = self._params.get("weight")
        return None if p is None else p.data

    def _bias(self) -> Array | None:
        p = self._params.get("bias")
        return None if p is None else p.data

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
