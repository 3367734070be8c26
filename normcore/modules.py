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

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import functional as F
from ._checks import (
    ShapeError,
    as_input,
    check_eps,
    check_momentum,
    check_positive_int,
    normalized_shape_tuple,
)
from ._module import IncompatibleKeys, Module
from ._parameter import Parameter
from .backend import Backend

Array = Any

__all__ = [
    "Parameter", "Module", "IncompatibleKeys",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "LayerNorm", "GroupNorm", "RMSNorm", "Dropout",
]


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
    _fast_kind = "batch_norm"  # (the per-call fast path: normcore._fast)

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
    _fast_kind = "instance_norm"

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

    _fast_kind = "layer_norm"

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

    _fast_kind = "rms_norm"

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

    _fast_kind = "group_norm"

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
