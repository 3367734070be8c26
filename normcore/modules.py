"""Modules: thin state-holders (parameters, buffers, train/eval, state_dict) over
:mod:`normcore.functional`, with torch.nn's names, arguments and defaults.

>>> import numpy as np, normcore
>>> bn = normcore.BatchNorm1d(3)
>>> y = bn(np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32))
>>> dx = bn.backward(np.ones_like(y))
>>> sorted(bn.state_dict())
['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _interop, registry
from . import functional as F
from ._checks import (
    ShapeError,
    as_input,
    check_dtype,
    check_eps,
    check_momentum,
    check_positive_int,
    normalized_shape_tuple,
)
from ._parameter import Parameter
from .backend import Backend

Array = Any

logger = logging.getLogger("normcore")

__all__ = [
    "Parameter", "Module", "IncompatibleKeys",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "LayerNorm", "GroupNorm", "RMSNorm", "Dropout",
]


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
        # a copy or a pickle starts with locks and saved contexts of its own
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_local")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._new_locks()

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
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s forward on backend %r (%s)", type(self).__name__, self.backend.name,
                         self._backend_why)
        back = None
        native = input
        if type(input) is not np.ndarray and _interop.is_foreign(input, self.backend):
            native, back = _interop.to_native(input, self.backend)
        y = self.forward(native)
        self._local.back = back  # (after the forward: a failed one leaves the last way back)
        if back is None:
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
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward(), or "
                               "twice for one forward: run forward first")
        dx, dweight, dbias = self._backward(grad_output, self._saved)
        with self._lock:
            for p, g in ((self._params.get("weight"), dweight), (self._params.get("bias"), dbias)):
                if p is not None and g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        self._saved = None
        return self._give_back(dx)

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


# ---------------------------------------------------------------------- BatchNorm / InstanceNorm
class _NormBase(Module):
    """Shared state of BatchNorm and InstanceNorm (torch's ``_NormBase``)."""

    def __init__(self, num_features: int, eps: float, momentum: float | None, affine: bool,
                 track_running_stats: bool, bias: bool, backend: str | Backend | None,
                 dtype: Any) -> None:
        super().__init__(backend, dtype)
        self.num_features = check_positive_int(num_features, "num_features")
        self.eps = check_eps(eps)
        self.momentum = check_momentum(momentum, allow_none=True)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        shape = (self.num_features,) if self.affine else None
        self._param("weight", shape, 1.0)
        self._param("bias", shape if bias else None, 0.0)
        self._buffers.update(running_mean=None, running_var=None, num_batches_tracked=None)
        if self.track_running_stats:
            self.reset_running_stats()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            c = (self.num_features,)
            with self._lock:
                self._buffers.update(running_mean=self.backend.full(c, 0.0, self.dtype),
                                     running_var=self.backend.full(c, 1.0, self.dtype),
                                     num_batches_tracked=np.array(0, dtype=np.int64))

    def reset_parameters(self) -> None:
        with self._lock:
            self.reset_running_stats()
            super().reset_parameters()

    def _optional_keys(self) -> set[str]:
        return {"num_batches_tracked"}  # torch fills it with 0 for old checkpoints

    def _check_input_dim(self, x: Array) -> None:
        ndim = x.ndim
        if ndim not in self._dims:
            want = " or ".join(f"{d}D" for d in self._dims)
            raise ShapeError(f"expected {want} input (got {ndim}D input)")

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"backend={self.backend.name!r}")


class _BatchNorm(_NormBase):
    _dims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, bias: bool = True,
                 backend: str | Backend | None = None, dtype: Any = np.float32) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias, backend,
                         dtype)

    def forward(self, input: Array) -> Array:
        input = as_input(input, self.backend)
        self._check_input_dim(input)
        channels = input.shape[1]
        if channels != self.num_features:
            raise ShapeError(f"expected input with {self.num_features} channels at dim 1, got "
                             f"{channels} (input shape {tuple(input.shape)})")
        if self.training and self.track_running_stats:
            with self._lock:  # read, update and commit the running statistics as one step
                return self._forward(input, True)
        return self._forward(input, False)

    def _forward(self, input: Array, update_stats: bool) -> Array:
        buffers = self._buffers  # (not the attribute lookups: each misses __dict__ first)
        tracked = int(buffers["num_batches_tracked"]) + 1 if update_stats else 0
        factor = 0.0 if self.momentum is None else self.momentum
        if update_stats and self.momentum is None:
            factor = 1.0 / tracked  # cumulative moving average
        rm, rv = buffers.get("running_mean"), buffers.get("running_var")
        use_batch = self.training or rm is None
        # In training without tracking torch passes no running statistics at all.
        if self.training and not self.track_running_stats:
            rm = rv = None
        y, saved = F.batch_norm(input, rm, rv, self._weight(), self._bias(), use_batch, factor,
                                self.eps, backend=self.backend, write_running=False)
        update = saved.running
        # Commit state only after everything succeeded.
        if update_stats:
            self._buffers["num_batches_tracked"] = np.array(tracked, dtype=np.int64)
        if update is not None:
            self._buffers.update(running_mean=update.mean, running_var=update.var)
        self._saved = saved
        return y

    def _backward(self, grad_output: Array, saved: F.Saved) -> tuple[Array, Array, Array]:
        return F.batch_norm_backward(grad_output, saved)


class BatchNorm1d(_BatchNorm):
    """Batch normalization over (N, C) or (N, C, L) input, as ``torch.nn.BatchNorm1d``.

    >>> import numpy as np, normcore
    >>> bn = normcore.BatchNorm1d(2)
    >>> y = bn(np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32))
    >>> bn.running_mean.astype(float).round(4).tolist()
    [0.2, 0.4]
    """

    _dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over (N, C, H, W) input, as ``torch.nn.BatchNorm2d``.

    >>> import numpy as np, normcore
    >>> bn = normcore.BatchNorm2d(3)
    >>> bn(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 3, 4, 4)
    """

    _dims = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch normalization over (N, C, D, H, W) input, as ``torch.nn.BatchNorm3d``.

    >>> import numpy as np, normcore
    >>> normcore.BatchNorm3d(3)(np.ones((2, 3, 2, 2, 2), np.float32)).shape
    (2, 3, 2, 2, 2)
    """

    _dims = (5,)


class _InstanceNorm(_NormBase):
    _dims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False, *, bias: bool = True,
                 backend: str | Backend | None = None, dtype: Any = np.float32) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias, backend,
                         dtype)

    def _optional_keys(self) -> set[str]:
        return {"num_batches_tracked"}

    def forward(self, input: Array) -> Array:
        input = as_input(input, self.backend)
        self._check_input_dim(input)
        shape = tuple(input.shape)
        unbatched = len(shape) == self._dims[0]
        feature_dim = 0 if unbatched else 1
        if shape[feature_dim] != self.num_features:
            if self.affine or self.track_running_stats:
                raise ShapeError(f"expected input's size at dim={feature_dim} to match "
                                 f"num_features ({self.num_features}), but got: "
                                 f"{shape[feature_dim]}.")
            warnings.warn(f"input's size at dim={feature_dim} does not match num_features. You "
                          "can silence this warning by not passing in num_features, which is not "
                          "used because affine=False", stacklevel=2)
        x = self.backend.reshape(input, (1,) + shape) if unbatched else input
        if self.training and self.track_running_stats:
            with self._lock:  # read, update and commit the running statistics as one step
                y, saved = self._forward(x)
        else:
            y, saved = self._forward(x)
        saved.extra["unbatched_shape"] = shape if unbatched else None
        self._saved = saved
        return self.backend.reshape(y, shape) if unbatched else y

    def _forward(self, x: Array) -> tuple[Array, F.Saved]:
        momentum = self.momentum if self.momentum is not None else 0.0  # as torch
        y, saved = F.instance_norm(
            x, self.running_mean, self.running_var, self._weight(), self._bias(),
            self.training or not self.track_running_stats, momentum, self.eps,
            backend=self.backend, write_running=False)
        update = saved.running
        if update is not None:
            self._buffers.update(running_mean=update.mean, running_var=update.var)
        return y, saved

    def _backward(self, grad_output: Array, saved: F.Saved) -> tuple[Array, Array, Array]:
        shape = saved.extra.get("unbatched_shape")
        if shape is not None and tuple(getattr(grad_output, "shape", ())) == shape:
            grad_output = self.backend.reshape(as_input(grad_output, self.backend, "grad_output"),
                                               (1,) + shape)
            dx, dw, db = F.instance_norm_backward(grad_output, saved)
            return self.backend.reshape(dx, shape), dw, db
        return F.instance_norm_backward(grad_output, saved)


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization over (N, C, L) or unbatched (C, L), as ``torch.nn.InstanceNorm1d``.

    >>> import numpy as np, normcore
    >>> normcore.InstanceNorm1d(1)(np.array([[1.0, 3.0]], np.float32)).round(4).tolist()
    [[-1.0, 1.0]]
    """

    _dims = (2, 3)


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization over (N, C, H, W) or (C, H, W), as ``torch.nn.InstanceNorm2d``.

    >>> import numpy as np, normcore
    >>> normcore.InstanceNorm2d(3)(np.ones((3, 2, 2), np.float32)).tolist()[0]
    [[0.0, 0.0], [0.0, 0.0]]
    """

    _dims = (3, 4)


class InstanceNorm3d(_InstanceNorm):
    """Instance normalization over (N, C, D, H, W) or (C, D, H, W), as ``torch.nn.InstanceNorm3d``.

    >>> import numpy as np, normcore
    >>> normcore.InstanceNorm3d(2)(np.ones((1, 2, 2, 2, 2), np.float32)).shape
    (1, 2, 2, 2, 2)
    """

    _dims = (4, 5)


# ---------------------------------------------------------------------- LayerNorm / RMSNorm
class LayerNorm(Module):
    """Layer normalization over the trailing ``normalized_shape``, as ``torch.nn.LayerNorm``.

    >>> import numpy as np, normcore
    >>> ln = normcore.LayerNorm(4)
    >>> ln(np.arange(8, dtype=np.float32).reshape(2, 4))[0].astype(float).round(4).tolist()
    [-1.3416, -0.4472, 0.4472, 1.3416]
    """

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, *,
                 backend: str | Backend | None = None, dtype: Any = np.float32) -> None:
        super().__init__(backend, dtype)
        self.normalized_shape = normalized_shape_tuple(normalized_shape)
        self.eps = check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        shape = self.normalized_shape if self.elementwise_affine else None
        self._param("weight", shape, 1.0)
        self._param("bias", shape if bias else None, 0.0)

    def forward(self, input: Array) -> Array:
        y, self._saved = F.layer_norm(input, self.normalized_shape, self._weight(), self._bias(),
                                      self.eps, backend=self.backend)
        return y

    def _backward(self, grad_output: Array, saved: F.Saved) -> tuple[Array, Array, Array]:
        return F.layer_norm_backward(grad_output, saved)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, backend={self.backend.name!r}")


class RMSNorm(Module):
    """Root-mean-square normalization, as ``torch.nn.RMSNorm`` (eps=None: the dtype's epsilon).

    >>> import numpy as np, normcore
    >>> normcore.RMSNorm(2, eps=0.0, dtype=np.float64)(np.array([[3.0, 4.0]])).astype(float).round(4).tolist()
    [[0.8485, 1.1314]]
    """

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, *, backend: str | Backend | None = None,
                 dtype: Any = np.float32) -> None:
        super().__init__(backend, dtype)
        self.normalized_shape = normalized_shape_tuple(normalized_shape)
        self.eps = None if eps is None else check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self._param("weight", self.normalized_shape if self.elementwise_affine else None, 1.0)

    def forward(self, input: Array) -> Array:
        y, self._saved = F.rms_norm(input, self.normalized_shape, self._weight(), self.eps,
                                    backend=self.backend)
        return y

    def _backward(self, grad_output: Array, saved: F.Saved) -> tuple[Array, Array, Array]:
        return F.rms_norm_backward(grad_output, saved)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, backend={self.backend.name!r}")


class GroupNorm(Module):
    """Group normalization over (N, C, *), as ``torch.nn.GroupNorm``.

    >>> import numpy as np, normcore
    >>> gn = normcore.GroupNorm(2, 4)
    >>> gn(np.arange(16, dtype=np.float32).reshape(2, 4, 2)).shape
    (2, 4, 2)
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, *, bias: bool = True, backend: str | Backend | None = None,
                 dtype: Any = np.float32) -> None:
        super().__init__(backend, dtype)
        self.num_groups = check_positive_int(num_groups, "num_groups")
        self.num_channels = check_positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups "
                             f"({num_groups})")
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        shape = (self.num_channels,) if self.affine else None
        self._param("weight", shape, 1.0)
        self._param("bias", shape if bias else None, 0.0)

    def forward(self, input: Array) -> Array:
        input = as_input(input, self.backend)
        shape = tuple(input.shape)
        if len(shape) >= 2 and shape[1] != self.num_channels:
            raise ShapeError(f"expected input with {self.num_channels} channels at dim 1, got "
                             f"{shape[1]} (input shape {shape})")
        y, self._saved = F.group_norm(input, self.num_groups, self._weight(), self._bias(),
                                      self.eps, backend=self.backend)
        return y

    def _backward(self, grad_output: Array, saved: F.Saved) -> tuple[Array, Array, Array]:
        return F.group_norm_backward(grad_output, saved)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"backend={self.backend.name!r}")


# ---------------------------------------------------------------------- Dropout
def _writable(backend: Backend, arr: Array) -> bool:
    """Whether an in-place write into ``arr`` can succeed, whatever library it comes from."""
    if backend.is_native(arr):
        return backend.writable(arr)
    flags = getattr(arr, "flags", None)  # NumPy's (a host array a device backend would copy)
    return bool(getattr(flags, "writeable", True))


class Dropout(Module):
    """Inverted dropout, as ``torch.nn.Dropout``; seedable with ``seed=`` or ``rng=``.

    >>> import numpy as np, normcore
    >>> drop = normcore.Dropout(0.5, seed=0)
    >>> set(drop(np.ones(100, np.float32)).tolist()) == {0.0, 2.0}
    True
    >>> drop.eval()(np.ones(3, np.float32)).tolist()
    [1.0, 1.0, 1.0]
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, *, seed: int | None = None,
                 rng: np.random.Generator | None = None, backend: str | Backend | None = None,
                 dtype: Any = np.float32) -> None:
        super().__init__(backend, dtype)
        self.p = F.check_dropout_p(p)
        self.inplace = bool(inplace)
        if rng is not None and seed is not None:
            raise ValueError("pass seed= or rng=, not both")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def forward(self, input: Array) -> Array:
        if self.inplace and not _writable(self.backend, input):
            raise ValueError(f"Dropout(inplace=True) cannot write its input ({type(input).__module__}"
                             f".{type(input).__name__}, read-only or immutable): pass a writable "
                             "array, or use inplace=False")  # (checked before the RNG moves)
        y, self._saved = F.dropout(input, self.p, self.training, rng=self.rng,
                                   backend=self.backend)
        if self.inplace and y is not input:
            self.backend.write(input, y)
            return input
        return y

    def backward(self, grad_output: Array) -> Array:
        if self._saved is None:
            raise RuntimeError("Dropout.backward() called before forward(), or twice for one "
                               "forward: run forward first")
        dx = F.dropout_backward(grad_output, self._saved)
        self._saved = None
        return self._give_back(dx)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}, backend={self.backend.name!r}"
