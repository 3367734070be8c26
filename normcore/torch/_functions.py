"""torch.autograd Functions over normcore's functional forward/backward pairs.

Each function here has ``torch.nn.functional``'s signature (plus a keyword ``backend``) and is
differentiable through one ``torch.autograd.Function``: its forward runs the normcore forward
(``normcore.functional.*``) on the tensors' memory, its backward the matching ``*_backward``.

CPU tensors on a backend of NumPy arrays (``numba``, ``numpy``) travel as NumPy views
(``Tensor.numpy()`` / ``torch.from_numpy``: no copy either way); tensors of any other kind or
backend go through the core's DLPack interop (:mod:`normcore._interop`). What the forward keeps for
the backward is kept by autograd itself (``ctx.save_for_backward``), so it is freed after the
backward unless ``retain_graph=True``, a second backward through a freed graph raises torch's own
error, an input modified in place after the forward is caught by torch's version counters, and
``torch.autograd.graph.saved_tensors_hooks`` see it. Under ``torch.no_grad()`` or
``torch.inference_mode()``, or when no input requires a gradient, nothing is kept at all.

Double backward (``create_graph=True`` and differentiating the gradients again) is not supported:
normcore's backward kernels are not differentiable, and torch raises a clear error when it is tried
(``@once_differentiable``).

>>> import torch, normcore.torch
>>> x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
>>> y = normcore.torch.layer_norm(x, (8,))
>>> torch.allclose(y, torch.nn.functional.layer_norm(x, (8,)))
True
>>> torch.autograd.gradcheck(lambda x: normcore.torch.layer_norm(x, (8,)), (x,))
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

import normcore.functional as NF
from normcore import registry
from normcore.backend import Backend

__all__ = ["batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm"]

Tensor = torch.Tensor
BackendArg = str | Backend | None

#: The saved arrays autograd keeps (as tensors) rather than the Saved object.
_STASHED = ("x", "mean", "var")


# ---------------------------------------------------------------------- tensors <-> arrays
def _host_path(be: Backend, x: Tensor) -> bool:
    """Whether ``x`` travels as a NumPy view: a CPU tensor for a CPU backend of NumPy arrays."""
    return be.array_library == "numpy" and be.device == "cpu" and x.device.type == "cpu"


def _check_dtype(x: Tensor, op: str) -> None:
    if x.dtype not in (torch.float32, torch.float64, torch.float16):
        extra = (" (NumPy, on which normcore's CPU backends compute, has no bfloat16: cast the "
                 "model to float32, or keep torch's own layer for bfloat16)"
                 if x.dtype == torch.bfloat16 else "")
        raise TypeError(f"normcore.torch.{op}: input dtype {x.dtype} is not supported; normcore "
                        f"computes float16, float32 and float64{extra}")


def _arg(t: Tensor | None, host: bool) -> Any:
    """A tensor as the functional API takes it: a NumPy view (host path) or the tensor itself,
    detached (DLPack path); None stays None."""
    if t is None:
        return None
    t = t.detach()
    return t.numpy() if host else t


def _tensor(a: Any) -> Tensor | None:
    """An array the functional API returned as a torch tensor sharing its memory."""
    if a is None or isinstance(a, Tensor):
        return a
    if isinstance(a, np.ndarray):
        if not a.flags.writeable:  # torch.from_numpy warns on read-only memory
            a = a.copy()
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def _memory_format(x: Tensor) -> torch.memory_format | None:
    """torch.channels_last(_3d) when a 4D/5D ``x`` is laid out channels-last (and not also
    contiguous, as a tensor with C == 1 or H == W == 1 may be); None otherwise."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if (x.dim() == 5 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last_3d)):
        return torch.channels_last_3d
    return None


def _in_format(t: Tensor, fmt: torch.memory_format | None) -> Tensor:
    """``t`` in ``fmt`` (None: contiguous); a copy only where its layout differs."""
    if fmt is None:
        return t if t.is_contiguous() else t.contiguous()
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


# ---------------------------------------------------------------------- the autograd Function
@dataclasses.dataclass
class _Op:
    """One call's plan: the normcore forward and backward, and the layouts torch gives."""

    name: str
    forward: Any  # (x, weight, bias) as the functional API takes them -> (y, saved)
    backward: Any  # (grad_output, saved) -> (dx, dweight, dbias)
    backend: Backend
    host: bool
    #: Memory format of the output (None: contiguous).
    y_format: Any = None
    #: Memory format of the input gradient (None: as the backend returns it).
    dx_format: Any = None


def _run_forward(op: _Op, x: Tensor, weight: Tensor | None, bias: Tensor | None
                 ) -> tuple[Tensor, NF.Saved]:
    y, saved = op.forward(_arg(x, op.host), _arg(weight, op.host), _arg(bias, op.host))
    return _in_format(_tensor(y), op.y_format), saved


class _NormFunction(torch.autograd.Function):
    """Forward and backward of one normcore layer call (see :func:`_apply`)."""

    @staticmethod
    def forward(ctx: Any, op: _Op, x: Tensor, weight: Tensor | None, bias: Tensor | None
                ) -> Tensor:
        y, saved = _run_forward(op, x, weight, bias)
        stash: list[Tensor | None] = []
        if op.host:  # autograd keeps the saved arrays (freed after backward, hooks see them)
            stash = [_tensor(getattr(saved, f)) for f in _STASHED]
            for f in _STASHED:  # (this Saved is ours alone: the forward just made it)
                setattr(saved, f, None)
        # x, weight and bias themselves: torch's version counters catch in-place changes.
        ctx.save_for_backward(x, weight, bias, *stash)
        ctx.op, ctx.saved = op, saved
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        op: _Op = ctx.op
        kept = ctx.saved_tensors  # raises torch's error after the graph was freed
        saved = ctx.saved
        if op.host:  # the arrays for this backward only (a retained graph keeps them in ctx)
            for f, t in zip(_STASHED, kept[3:], strict=True):
                setattr(saved, f, None if t is None else t.numpy())
        try:
            grads = op.backward(_arg(grad_output, op.host), saved)
        finally:
            if op.host:
                for f in _STASHED:
                    setattr(saved, f, None)
        dx, dw, db = (_tensor(g) for g in grads)
        if op.dx_format is not None:
            dx = _in_format(dx, op.dx_format)
        need = ctx.needs_input_grad
        return (None, dx if need[1] else None, dw if need[2] else None,
                db if need[3] else None)


def _apply(op: _Op, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Through the autograd Function when a gradient is wanted; straight to the normcore forward
    (nothing kept) under no_grad/inference_mode or when nothing requires a gradient."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, weight, bias)):
        return _NormFunction.apply(op, x, weight, bias)
    return _run_forward(op, x, weight, bias)[0]


def _select(backend: BackendArg) -> Backend:
    return registry.select(backend)


def _running(saved: NF.Saved, running_mean: Tensor | None, running_var: Tensor | None) -> None:
    """The new running statistics of a training forward (``saved.running``: the functional API
    is called with ``write_running=False``) written into torch's buffers in place by torch's own
    ``copy_``, as torch's batch_norm updates them, whichever backend computed them (NumPy arrays,
    or JAX's immutable ones)."""
    if saved.running is not None and running_mean is not None:
        be = saved.backend
        with torch.no_grad():
            running_mean.copy_(_tensor(be.to_numpy(saved.running.mean)))
            running_var.copy_(_tensor(be.to_numpy(saved.running.var)))


# ---------------------------------------------------------------------- the functions
def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, backend: BackendArg = None) -> Tensor:
    """``torch.nn.functional.batch_norm`` computed by normcore (differentiable; running statistics
    updated in place in training mode, as torch does)."""
    _check_dtype(input, "batch_norm")
    be = _select(backend)
    host = _host_path(be, input)
    rm, rv = _arg(running_mean, host), _arg(running_var, host)

    def forward(x: Any, w: Any, b: Any) -> tuple[Any, NF.Saved]:
        y, saved = NF.batch_norm(x, rm, rv, w, b, training, momentum, eps, backend=be,
                                 write_running=False)
        _running(saved, running_mean, running_var)
        return y, saved

    fmt = _memory_format(input)
    op = _Op("batch_norm", forward, NF.batch_norm_backward, be, host, y_format=fmt,
             dx_format=fmt)
    return _apply(op, input, weight, bias)


def instance_norm(input: Tensor, running_mean: Tensor | None = None,
                  running_var: Tensor | None = None, weight: Tensor | None = None,
                  bias: Tensor | None = None, use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5, *, backend: BackendArg = None) -> Tensor:
    """``torch.nn.functional.instance_norm`` computed by normcore (differentiable)."""
    _check_dtype(input, "instance_norm")
    be = _select(backend)
    host = _host_path(be, input)
    rm, rv = _arg(running_mean, host), _arg(running_var, host)

    def forward(x: Any, w: Any, b: Any) -> tuple[Any, NF.Saved]:
        y, saved = NF.instance_norm(x, rm, rv, w, b, use_input_stats, momentum, eps, backend=be,
                                    write_running=False)
        _running(saved, running_mean, running_var)
        return y, saved

    # torch: a contiguous output, and the input gradient in the input's memory format
    op = _Op("instance_norm", forward, NF.instance_norm_backward, be, host, y_format=None,
             dx_format=_memory_format(input))
    return _apply(op, input, weight, bias)


def layer_norm(input: Tensor, normalized_shape: Sequence[int] | int,
               weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5, *,
               backend: BackendArg = None) -> Tensor:
    """``torch.nn.functional.layer_norm`` computed by normcore (differentiable)."""
    _check_dtype(input, "layer_norm")
    be = _select(backend)
    shape = tuple(normalized_shape) if isinstance(normalized_shape, Sequence) else normalized_shape

    def forward(x: Any, w: Any, b: Any) -> tuple[Any, NF.Saved]:
        return NF.layer_norm(x, shape, w, b, eps, backend=be)

    op = _Op("layer_norm", forward, NF.layer_norm_backward, be, _host_path(be, input))
    return _apply(op, input, weight, bias)


def rms_norm(input: Tensor, normalized_shape: Sequence[int] | int, weight: Tensor | None = None,
             eps: float | None = None, *, backend: BackendArg = None) -> Tensor:
    """``torch.nn.functional.rms_norm`` computed by normcore (differentiable)."""
    _check_dtype(input, "rms_norm")
    be = _select(backend)
    shape = tuple(normalized_shape) if isinstance(normalized_shape, Sequence) else normalized_shape

    def forward(x: Any, w: Any, b: Any) -> tuple[Any, NF.Saved]:
        return NF.rms_norm(x, shape, w, eps, backend=be)

    op = _Op("rms_norm", forward, NF.rms_norm_backward, be, _host_path(be, input))
    return _apply(op, input, weight, None)


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5, *,
               backend: BackendArg = None) -> Tensor:
    """``torch.nn.functional.group_norm`` computed by normcore (differentiable)."""
    _check_dtype(input, "group_norm")
    be = _select(backend)

    def forward(x: Any, w: Any, b: Any) -> tuple[Any, NF.Saved]:
        return NF.group_norm(x, num_groups, w, b, eps, backend=be)

    fmt = _memory_format(input)
    op = _Op("group_norm", forward, NF.group_norm_backward, be, _host_path(be, input),
             y_format=fmt, dx_format=fmt)
    return _apply(op, input, weight, bias)
