"""The functional layer: torch.nn.functional's normalization signatures, each paired with an
explicit backward.

Every forward returns ``(output, saved)``; ``saved`` holds what backward needs, and
``*_backward(grad_output, saved)`` returns ``(grad_input, grad_weight, grad_bias)`` (None for a
missing weight or bias). This module owns the semantics: validation, the reshape of every layer onto
one of the backend's canonical views (see :mod:`normcore.backend`), defaults, and the
running-statistics policy. Backends only do the arithmetic.

>>> import numpy as np, normcore.functional as F
>>> x = np.arange(8, dtype=np.float32).reshape(2, 4)
>>> y, saved = F.layer_norm(x, (4,))
>>> dx, dw, db = F.layer_norm_backward(np.ones_like(x), saved)
>>> y[0].astype(float).round(4).tolist(), float(abs(dx).max()) < 1e-6
([-1.3416, -0.4472, 0.4472, 1.3416], True)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _interop, registry
from . import _saved as _state
from ._checks import (
    DTypeError,
    ShapeError,
    as_input,
    check_eps,
    check_momentum,
    check_positive_int,
    is_number,
    normalized_shape_tuple,
    np_dtype,
    numel,
    same_dtype,
    vector,
)
from ._saved import RunningUpdate, Saved
from .backend import Backend

__all__ = [
    "Saved",
    "batch_norm", "batch_norm_backward",
    "instance_norm", "instance_norm_backward",
    "layer_norm", "layer_norm_backward",
    "group_norm", "group_norm_backward",
    "rms_norm", "rms_norm_backward",
    "weight_standardization", "weight_standardization_backward",
    "dropout", "dropout_backward",
]

logger = logging.getLogger("normcore")
Array = Any


def _call(backend: Backend, name: str, *args: Any) -> Any:
    # (registry.kernel's first case, the usual one, without the call)
    fn = getattr(backend, name) if name in backend.kernels else registry.kernel(backend, name)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s ran on backend %r", name, backend.name)
    return fn(*args)


def _prepare(input: Array, backend: str | Backend | None) -> tuple[Backend, Array, Any]:
    """The backend, ``input`` as its array, and the way back to input's library (or None)."""
    chosen = registry.select(backend)
    back = None
    if type(input) is not np.ndarray and _interop.is_foreign(input, chosen):
        input, back = _interop.to_native(input, chosen)
    return chosen, as_input(input, chosen), back


def _size(x: Array) -> int:
    """Element count (a torch tensor's ``size`` is a method, not the Array API's attribute)."""
    size = getattr(x, "size", None)
    return size if type(size) is int else numel(tuple(x.shape))


def _returned(y: Array, saved: Saved) -> Array:
    return y if saved.back is None else saved.back(y)


def _empty_like(backend: Backend, x: Array) -> Array:
    return backend.full(tuple(x.shape), 0.0, x.dtype)


def _zeros(backend: Backend, shape: tuple[int, ...] | None, dtype: Any) -> Array:
    return None if shape is None else backend.full(shape, 0.0, dtype)


def _reshape_param(backend: Backend, p: Array, shape: tuple[int, ...]) -> Array:
    return None if p is None else backend.reshape(p, shape)


# ---------------------------------------------------------------------- per-channel norms
def _channel_args(
    op: str, layout: str, min_ndim: int, input: Array, weight: Array | None, bias: Array | None,
    running_mean: Array | None, running_var: Array | None, momentum: float, eps: float,
    backend: str | Backend | None,
) -> tuple[Backend, Array, float, tuple[Array | None, ...]]:
    """Validate the arguments BatchNorm and InstanceNorm share; return them on the backend."""
    eps = check_eps(eps)
    momentum = check_momentum(momentum, allow_none=False)
    be, x, back = _prepare(input, backend)
    if x.ndim < min_ndim:
        raise ShapeError(f"{op} expects input of shape {layout}, got {x.ndim}D input of shape "
                         f"{tuple(x.shape)}")
    c = x.shape[1]
    vectors = tuple(vector(v, be, c, what, x) for v, what in (
        (weight, "weight"), (bias, "bias"), (running_mean, "running_mean"),
        (running_var, "running_var")))
    if (vectors[2] is None) != (vectors[3] is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    return be, x, eps, momentum, vectors, back


def _moments_normalize(be: Backend, x3: Array, eps: float, weight: Array | None,
                       bias: Array | None) -> tuple[Array, Array, Array]:
    """Batch statistics and the output they normalize (the optional fused kernel: the backend's
    own or the contract's composition, see :func:`normcore.registry.kernel`)."""
    return _call(be, "channel_moments_normalize", x3, eps, weight, bias)


def _batch_norm(
    input: Array, running_mean: Array | None, running_var: Array | None, weight: Array | None,
    bias: Array | None, training: bool, momentum: float, eps: float,
    backend: str | Backend | None,
) -> tuple[Array, Saved, RunningUpdate | None]:
    """batch_norm without side effects: returns the running statistics to commit."""
    be, x, eps, momentum, (weight, bias, running_mean, running_var), back = _channel_args(
        "batch_norm", "(N, C, *)", 2, input, weight, bias, running_mean, running_var, momentum,
        eps, backend)
    if training and eps <= 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    n_, c = x.shape[0], x.shape[1]
    per_channel = numel(tuple(x.shape)) // c if c else 0
    if training and per_channel == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{tuple(x.shape)}")
    if not training and running_mean is None:
        raise ValueError("batch_norm in evaluation mode (training=False) needs running_mean and "
                         "running_var; got None")
    saved = Saved("batch_norm", be, tuple(x.shape), np_dtype(x.dtype), eps=eps,
                  weight=weight, weight_shape=None if weight is None else (c,),
                  has_bias=bias is not None, extra={"batch_stats": training}, back=back)
    if _size(x) == 0:
        return _empty_like(be, x), saved, None
    x3 = be.reshape(x, (n_, c, per_channel // n_))
    update = None
    if training and running_mean is not None:
        correction = per_channel / (per_channel - 1)
        y, mean, var, new_mean, new_var = _call(
            be, "channel_moments_normalize_update", x3, eps, weight, bias, running_mean,
            running_var, momentum, correction)
        update = RunningUpdate(new_mean, new_var)
    elif training:
        y, mean, var = _moments_normalize(be, x3, eps, weight, bias)
    else:
        mean, var = running_mean, running_var
        y = _call(be, "channel_normalize", x3, mean, var, eps, weight, bias)
    saved.x, saved.mean, saved.var = x3, mean, var
    return be.reshape(y, tuple(x.shape)), saved, update


def batch_norm(
    input: Array, running_mean: Array | None, running_var: Array | None,
    weight: Array | None = None, bias: Array | None = None, training: bool = False,
    momentum: float = 0.1, eps: float = 1e-5, *, backend: str | Backend | None = None,
    write_running: bool = True,
) -> tuple[Array, Saved]:
    """Batch normalization over (N, C, *) input, as ``torch.nn.functional.batch_norm``.

    In training mode the batch statistics normalize and, when running statistics are given, they
    are updated in place: ``running = (1 - momentum) * running + momentum * batch`` with the
    unbiased batch variance. In evaluation mode the running statistics normalize.
    ``saved.running`` holds the new statistics; ``write_running=False`` (and a backend of
    immutable arrays) leaves the given ones as they are (the modules use it: they keep the new
    arrays in place of the old).

    >>> import numpy as np, normcore.functional as F
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32)
    >>> rm, rv = np.zeros(2, np.float32), np.ones(2, np.float32)
    >>> y, saved = F.batch_norm(x, rm, rv, training=True)
    >>> y.astype(float).round(4).tolist(), rm.astype(float).round(4).tolist()
    ([[-1.0, -1.0], [1.0, 1.0]], [0.2, 0.4])
    """
    be = registry.select(backend)
    targets = _state.targets(be, running_mean, running_var, bool(training) and write_running)
    y, saved, update = _batch_norm(input, running_mean, running_var, weight, bias, training,
                                   momentum, eps, be)
    _state.commit(be, saved, update, targets)
    return _returned(y, saved), saved


# ---------------------------------------------------------------------- instance norm
def _instance_norm(
    input: Array, running_mean: Array | None, running_var: Array | None, weight: Array | None,
    bias: Array | None, use_input_stats: bool, momentum: float, eps: float,
    backend: str | Backend | None,
) -> tuple[Array, Saved, RunningUpdate | None]:
    be, x, eps, momentum, (weight, bias, running_mean, running_var), back = _channel_args(
        "instance_norm", "(N, C, *spatial)", 3, input, weight, bias, running_mean, running_var,
        momentum, eps, backend)
    n_, c = x.shape[0], x.shape[1]
    spatial = numel(tuple(x.shape[2:]))
    if use_input_stats and spatial == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size "
                         f"{tuple(x.shape)}")
    if not use_input_stats and running_mean is None:
        raise ValueError("instance_norm with use_input_stats=False needs running_mean and "
                         "running_var; got None")
    saved = Saved("instance_norm", be, tuple(x.shape), np_dtype(x.dtype), eps=eps, weight=weight,
                  weight_shape=None if weight is None else (c,), has_bias=bias is not None,
                  extra={"batch_stats": use_input_stats}, back=back)
    if _size(x) == 0:
        return _empty_like(be, x), saved, None
    update = None
    if use_input_stats:
        x4 = be.reshape(x, (n_, c, 1, spatial))
        y, mean, var = _call(be, "group_normalize", x4, _reshape_param(be, weight, (c, 1)),
                             _reshape_param(be, bias, (c, 1)), eps, True)
        if running_mean is not None:
            # torch averages the per-instance statistics over the batch, var made unbiased over L.
            new_mean, new_var = _call(be, "running_update", running_mean, running_var, mean, var,
                                      momentum, spatial / (spatial - 1))
            update = RunningUpdate(new_mean, new_var)
        if eps == 0:
            y, var = _constant_planes_without_eps(be, y, var, bias)
        saved.x, saved.mean, saved.var = x4, mean, var
        saved.weight = _reshape_param(be, weight, (c, 1))
    else:
        x3 = be.reshape(x, (n_, c, spatial))
        y = _call(be, "channel_normalize", x3, running_mean, running_var, eps, weight, bias)
        saved.x, saved.mean, saved.var = x3, running_mean, running_var
    return be.reshape(y, tuple(x.shape)), saved, update


def _constant_planes_without_eps(be: Backend, y4: Array, var: Array, bias: Array | None
                                 ) -> tuple[Array, Array]:
    """torch's instance norm takes ``invstd = 0`` where ``var == 0`` and ``eps == 0`` (a
    constant plane): its output is the bias and its gradients 0, where ``1 / sqrt(0)`` gives NaN.
    The kernels keep the contract's ``rstd = 1 / sqrt(var + eps)``; this rare case (eps == 0 and
    a constant plane) is mended on the host: y set to the bias there, and an infinite variance
    saved for the backward, whose ``rstd`` is then exactly 0."""
    var_h = np.asarray(be.to_numpy(var))
    flat = var_h == 0
    if not flat.any():
        return y4, var
    y_h = np.array(be.to_numpy(y4))
    b = 0.0 if bias is None else np.asarray(be.to_numpy(bias), dtype=y_h.dtype)[None, :, None]
    y_h[:, :, 0, :] = np.where(flat[:, :, None], b, y_h[:, :, 0, :])
    return be.asarray(y_h), be.asarray(np.where(flat, np.inf, var_h).astype(var_h.dtype))


def instance_norm(
    input: Array, running_mean: Array | None = None, running_var: Array | None = None,
    weight: Array | None = None, bias: Array | None = None, use_input_stats: bool = True,
    momentum: float = 0.1, eps: float = 1e-5, *, backend: str | Backend | None = None,
    write_running: bool = True,
) -> tuple[Array, Saved]:
    """Instance normalization over (N, C, *spatial), as ``torch.nn.functional.instance_norm``.

    Each (n, c) plane is normalized by its own statistics when ``use_input_stats``; running
    statistics, when given, are updated in place with the batch average of the per-instance ones
    (``saved.running`` holds them too; ``write_running=False`` leaves the given arrays alone).

    >>> import numpy as np, normcore.functional as F
    >>> y, _ = F.instance_norm(np.array([[[1.0, 3.0]]], dtype=np.float32))
    >>> y.round(4).tolist()
    [[[-1.0, 1.0]]]
    """
    be = registry.select(backend)
    targets = _state.targets(be, running_mean, running_var, bool(use_input_stats) and write_running)
    y, saved, update = _instance_norm(input, running_mean, running_var, weight, bias,
                                      use_input_stats, momentum, eps, be)
    _state.commit(be, saved, update, targets)
    return _returned(y, saved), saved


# ---------------------------------------------------------------------- row norms
def _row_norm(
    op: str, input: Array, normalized_shape: Sequence[int] | int, weight: Array | None,
    bias: Array | None, eps: float | None, center: bool, backend: str | Backend | None,
) -> tuple[Array, Saved]:
    shape = normalized_shape_tuple(normalized_shape)
    be, x, back = _prepare(input, backend)
    if eps is None:  # torch: the epsilon of the type it computes in (float32 for float16)
        eps = float(np.finfo(np.promote_types(np_dtype(x.dtype), np.float32)).eps)
    eps = check_eps(eps)
    k = len(shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k:]) != shape:
        raise ShapeError(f"Given normalized_shape={list(shape)}, expected input with shape "
                         f"[*, {', '.join(map(str, shape))}], but got input of size "
                         f"{list(x.shape)}")
    weight = _trailing_param(weight, be, shape, "weight", x)
    bias = _trailing_param(bias, be, shape, "bias", x)
    cols = numel(shape)
    w2 = _reshape_param(be, weight, (1, cols))
    saved = Saved(op, be, tuple(x.shape), np_dtype(x.dtype), eps=eps, weight=w2,
                  weight_shape=None if weight is None else shape, has_bias=bias is not None,
                  extra={"center": center}, back=back)
    if _size(x) == 0:
        return _returned(_empty_like(be, x), saved), saved
    x4 = be.reshape(x, (_size(x) // cols, 1, cols, 1))
    y, mean, var = _call(be, "group_normalize", x4, w2, _reshape_param(be, bias, (1, cols)),
                         eps, center)
    saved.x, saved.mean, saved.var = x4, mean, var
    return _returned(be.reshape(y, tuple(x.shape)), saved), saved


def _trailing_param(p: Array | None, be: Backend, shape: tuple[int, ...], what: str,
                    x: Array) -> Array | None:
    """An optional weight or bias of exactly ``normalized_shape``, in x's dtype."""
    if p is None:
        return None
    if type(p) is type(x) and p.dtype == x.dtype and p.shape == shape:
        return p  # the usual case, settled by x's checks
    p = as_input(p, be, what)
    if tuple(p.shape) != shape:
        raise ShapeError(f"{what} must have shape {shape} (normalized_shape), got {tuple(p.shape)}")
    same_dtype(x, p, what)
    return p


def layer_norm(
    input: Array, normalized_shape: Sequence[int] | int, weight: Array | None = None,
    bias: Array | None = None, eps: float = 1e-5, *, backend: str | Backend | None = None,
) -> tuple[Array, Saved]:
    """Layer normalization over the trailing ``normalized_shape`` dims (``F.layer_norm``).

    >>> import numpy as np, normcore.functional as F
    >>> y, _ = F.layer_norm(np.array([[1.0, 3.0]], dtype=np.float64), 2, eps=0.0)
    >>> y.tolist()
    [[-1.0, 1.0]]
    """
    return _row_norm("layer_norm", input, normalized_shape, weight, bias, eps, True, backend)


def rms_norm(
    input: Array, normalized_shape: Sequence[int] | int, weight: Array | None = None,
    eps: float | None = None, *, backend: str | Backend | None = None,
) -> tuple[Array, Saved]:
    """RMS normalization ``x / sqrt(mean(x**2) + eps) * weight`` (``F.rms_norm``).

    ``eps=None`` uses the machine epsilon of the input's dtype, as torch does.

    >>> import numpy as np, normcore.functional as F
    >>> y, _ = F.rms_norm(np.array([[3.0, 4.0]]), 2, eps=0.0)
    >>> np.round(y, 6).tolist()
    [[0.848528, 1.131371]]
    """
    return _row_norm("rms_norm", input, normalized_shape, weight, None, eps, False, backend)


def group_norm(
    input: Array, num_groups: int, weight: Array | None = None, bias: Array | None = None,
    eps: float = 1e-5, *, backend: str | Backend | None = None,
) -> tuple[Array, Saved]:
    """Group normalization over (N, C, *): C channels split into ``num_groups`` (``F.group_norm``).

    >>> import numpy as np, normcore.functional as F
    >>> y, _ = F.group_norm(np.array([[[1.0], [3.0]]]), 1, eps=0.0)
    >>> y.ravel().tolist()
    [-1.0, 1.0]
    """
    groups = check_positive_int(num_groups, "num_groups")
    eps = check_eps(eps)
    be, x, back = _prepare(input, backend)
    if x.ndim < 2:
        raise ShapeError(f"group_norm expects input of shape (N, C, *), got {x.ndim}D input of "
                         f"shape {tuple(x.shape)}")
    n_, c = x.shape[0], x.shape[1]
    if c % groups:
        raise ShapeError(f"Expected number of channels in input to be divisible by num_groups, "
                         f"but got input of shape {tuple(x.shape)} and num_groups={groups}")
    weight = vector(weight, be, c, "weight", x)
    bias = vector(bias, be, c, "bias", x)
    w2 = _reshape_param(be, weight, (groups, c // groups))
    saved = Saved("group_norm", be, tuple(x.shape), np_dtype(x.dtype), eps=eps, weight=w2,
                  weight_shape=None if weight is None else (c,), has_bias=bias is not None,
                  extra={"center": True}, back=back)
    if _size(x) == 0:
        return _returned(_empty_like(be, x), saved), saved
    x4 = be.reshape(x, (n_, groups, c // groups, numel(tuple(x.shape[2:]))))
    y, mean, var = _call(be, "group_normalize", x4, w2,
                         _reshape_param(be, bias, (groups, c // groups)), eps, True)
    saved.x, saved.mean, saved.var = x4, mean, var
    return _returned(be.reshape(y, tuple(x.shape)), saved), saved


# ---------------------------------------------------------------------- shared backward
def _check_grad(grad_output: Array, saved: Saved, op: str | tuple[str, ...]) -> Array:
    if not isinstance(saved, Saved):
        raise TypeError(f"saved must be the Saved object a forward returned, got "
                        f"{type(saved).__name__}")
    ops = (op,) if isinstance(op, str) else op
    if saved.op not in ops:
        raise ValueError(f"this backward is for {' / '.join(ops)}, but saved comes from "
                         f"{saved.op}")
    dy = as_input(grad_output, saved.backend, "grad_output")
    if tuple(dy.shape) != saved.input_shape:
        raise ShapeError(f"grad_output must have the forward input's shape {saved.input_shape}, "
                         f"got {tuple(dy.shape)}")
    if np_dtype(dy.dtype) != saved.dtype:
        raise DTypeError(f"grad_output dtype {np_dtype(dy.dtype)} does not match the forward "
                         f"input dtype {saved.dtype}")
    return dy


def _norm_backward(grad_output: Array, saved: Saved, op: str) -> tuple[Array, Array, Array]:
    dy = _check_grad(grad_output, saved, op)
    be = saved.backend
    wdtype = saved.dtype
    if saved.x is None:  # empty input
        zeros = _zeros(be, saved.weight_shape, wdtype)
        bias_grad = _zeros(be, saved.weight_shape, wdtype) if saved.has_bias else None
        return _all_returned((_empty_like(be, dy), zeros, bias_grad), saved)
    x = saved.x
    dy_view = be.reshape(dy, tuple(x.shape))
    if x.ndim == 3:
        dx, dw, db = _call(be, "channel_normalize_backward", dy_view, x, saved.mean,
                           saved.var, saved.eps, saved.weight, saved.extra["batch_stats"])
    else:
        dx, dw, db = _call(be, "group_normalize_backward", dy_view, x, saved.mean,
                           saved.var, saved.eps, saved.weight, saved.extra.get("center", True))
    wshape = saved.weight_shape
    dweight = None if wshape is None else be.reshape(dw, wshape)
    dbias = be.reshape(db, wshape) if saved.has_bias else None
    dx = be.reshape(dx, saved.input_shape)
    if saved.back is None:
        return dx, dweight, dbias
    return _all_returned((dx, dweight, dbias), saved)


def _all_returned(arrays: tuple[Array, ...], saved: Saved) -> tuple[Array, ...]:
    if saved.back is None:
        return arrays
    return tuple(None if a is None else saved.back(a) for a in arrays)


def batch_norm_backward(grad_output: Array, saved: Saved) -> tuple[Array, Array, Array]:
    """Gradients of :func:`batch_norm`: ``(grad_input, grad_weight, grad_bias)``."""
    return _norm_backward(grad_output, saved, "batch_norm")


def instance_norm_backward(grad_output: Array, saved: Saved) -> tuple[Array, Array, Array]:
    """Gradients of :func:`instance_norm`: ``(grad_input, grad_weight, grad_bias)``."""
    return _norm_backward(grad_output, saved, "instance_norm")


def layer_norm_backward(grad_output: Array, saved: Saved) -> tuple[Array, Array, Array]:
    """Gradients of :func:`layer_norm`: ``(grad_input, grad_weight, grad_bias)``."""
    return _norm_backward(grad_output, saved, "layer_norm")


def group_norm_backward(grad_output: Array, saved: Saved) -> tuple[Array, Array, Array]:
    """Gradients of :func:`group_norm`: ``(grad_input, grad_weight, grad_bias)``."""
    return _norm_backward(grad_output, saved, "group_norm")


def rms_norm_backward(grad_output: Array, saved: Saved) -> tuple[Array, Array, None]:
    """Gradients of :func:`rms_norm`: ``(grad_input, grad_weight, None)``."""
    return _norm_backward(grad_output, saved, "rms_norm")


# ---------------------------------------------------------------------- weight standardization
def weight_standardization(
    weight: Array, eps: float = 1e-5, *, unbiased: bool = False, eps_in_root: bool = True,
    backend: str | Backend | None = None,
) -> tuple[Array, Saved]:
    """Standardize a conv weight (out, in, *kernel) per output filter (the GN+WS recipe).

    Default: ``(w - mean) / sqrt(var + eps)`` with the biased variance over each filter's
    in*prod(kernel) values (as timm's ``StdConv2d``, i.e. layer norm without affine over a filter).
    ``unbiased=True, eps_in_root=False`` gives the original WS paper's code,
    ``(w - mean) / (std_unbiased + eps)``.

    >>> import numpy as np, normcore.functional as F
    >>> w_hat, _ = F.weight_standardization(np.array([[[[1.0, 3.0]]]]), eps=0.0)
    >>> w_hat.ravel().tolist()
    [-1.0, 1.0]
    """
    eps = check_eps(eps)
    be, w, back = _prepare(weight, backend)
    if w.ndim < 2:
        raise ShapeError(f"weight_standardization expects a weight of shape (out, in, *kernel), "
                         f"got {w.ndim}D of shape {tuple(w.shape)}")
    ddof = 1 if unbiased else 0
    rows = w.shape[0]
    cols = numel(tuple(w.shape[1:]))
    if cols - ddof <= 0 and _size(w):
        raise ValueError(f"the unbiased std needs at least 2 values per filter, got {cols}")
    saved = Saved("weight_standardization", be, tuple(w.shape), np_dtype(w.dtype), eps=eps,
                  extra={"ddof": ddof, "eps_in_root": bool(eps_in_root)}, back=back)
    if _size(w) == 0:
        return _returned(_empty_like(be, w), saved), saved
    w2 = be.reshape(w, (rows, cols))
    y, mean, denom = _call(be, "standardize_rows", w2, eps, ddof, bool(eps_in_root))
    saved.x, saved.mean, saved.var = w2, mean, denom
    return _returned(be.reshape(y, tuple(w.shape)), saved), saved


def weight_standardization_backward(grad_output: Array, saved: Saved) -> Array:
    """Gradient of :func:`weight_standardization` with respect to the raw weight."""
    dy = _check_grad(grad_output, saved, "weight_standardization")
    if saved.x is None:
        return _returned(_empty_like(saved.backend, dy), saved)
    be = saved.backend
    dx = _call(be, "standardize_rows_backward", be.reshape(dy, tuple(saved.x.shape)), saved.x,
               saved.mean, saved.var, saved.eps, saved.extra["ddof"], saved.extra["eps_in_root"])
    return _returned(be.reshape(dx, saved.input_shape), saved)


# ---------------------------------------------------------------------- dropout
def check_dropout_p(p: float) -> float:
    if not is_number(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
    return float(p)


def dropout(
    input: Array, p: float = 0.5, training: bool = True, *, seed: int | None = None,
    rng: np.random.Generator | None = None, backend: str | Backend | None = None,
) -> tuple[Array, Saved]:
    """Inverted dropout (``F.dropout``): zero each element with probability p, scale the rest by
    1/(1-p). Identity when not training. The mask comes from ``seed`` (or a seed drawn from
    ``rng``, or from fresh entropy) and is the same on every backend.

    >>> import numpy as np, normcore.functional as F
    >>> y, _ = F.dropout(np.ones(6, np.float32), 0.5, seed=0)
    >>> sorted(set(y.tolist())) == [0.0, 2.0] or set(y.tolist()) <= {0.0, 2.0}
    True
    """
    p = check_dropout_p(p)
    be, x, back = _prepare(input, backend)
    if seed is None:
        seed = int((rng if rng is not None else np.random.default_rng()).integers(0, 2**63))
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    active = bool(training) and p > 0.0 and _size(x) > 0
    saved = Saved("dropout", be, tuple(x.shape), np_dtype(x.dtype),
                  extra={"p": p, "seed": int(seed) % 2**63, "active": active}, back=back)
    if not active:
        return input, saved  # the very array given, as torch returns it
    return _returned(_call(be, "dropout", x, p, int(seed) % 2**63), saved), saved


def dropout_backward(grad_output: Array, saved: Saved) -> Array:
    """Gradient of :func:`dropout`: the same mask and scale applied to ``grad_output``."""
    if not saved.extra["active"]:
        _check_grad(grad_output, saved, "dropout")
        return grad_output
    dy = _check_grad(grad_output, saved, "dropout")
    return _returned(_call(saved.backend, "dropout", dy, saved.extra["p"], saved.extra["seed"]),
                     saved)
