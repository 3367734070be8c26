"""Drop-in ``torch.nn`` normalization modules computed by normcore.

Each class subclasses torch's own (``normcore.torch.BatchNorm2d`` is a ``torch.nn.BatchNorm2d``):
the constructor, parameters (real ``torch.nn.Parameter``s), buffers, ``state_dict`` keys,
``_load_from_state_dict`` (old checkpoints without ``num_batches_tracked``), ``reset_parameters``,
``train``/``eval``, ``.to()``, hooks and pickling are torch's. Only the call to
``torch.nn.functional`` is replaced, by the differentiable normcore function of
:mod:`normcore.torch._functions`; the one extra constructor argument is the keyword ``backend``
(a normcore backend name; None: normcore's default at each call).

The forwards are excluded from ``torch.compile`` graphs (``torch.compiler.disable``): a compiled
model breaks its graph around each normcore layer and runs it eagerly.

>>> import torch, normcore.torch
>>> bn = normcore.torch.BatchNorm2d(3)                 # torch.nn.BatchNorm2d's arguments
>>> isinstance(bn, torch.nn.BatchNorm2d), list(bn.state_dict())
(True, ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'])
>>> y = bn(torch.randn(4, 3, 5, 5) + 2)              # batch statistics; running ones updated
>>> bool((bn.running_mean > 0.1).all()), int(bn.num_batches_tracked)
(True, 1)
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

import normcore.torch._functions as NTF
from normcore import registry
from normcore.backend import Backend

__all__ = [
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
    "LayerNorm", "GroupNorm", "RMSNorm",
]


#: Each drop-in's forward runs eagerly under torch.compile: a graph break around it, and with
#: ``fullgraph=True`` torch's error quotes this reason.
_REASON = ("normcore.torch layers run normcore's kernels (NumPy/Numba) eagerly: torch.compile "
           "breaks the graph around them; use fullgraph=False, or normcore.torch.unconvert(model) "
           "to compile torch's own norm layers into the graph")
try:
    _eager = torch.compiler.disable(reason=_REASON)
except TypeError:  # torch < 2.7 takes no reason
    _eager = torch.compiler.disable(recursive=True)


def backend_name(backend: str | Backend | None) -> str | None:
    """A backend argument as the name a module keeps (checked now: an unknown or unavailable
    backend raises here, not at the first forward); None stays None (the default at each call)."""
    if backend is None:
        return None
    return registry.select(backend).name


class _Bridged:
    """What every drop-in adds to its torch class: the ``backend`` keyword and attribute."""

    #: The normcore backend's name; None: normcore's default at each call.
    backend: str | None = None

    def __init__(self, *args: Any, backend: str | Backend | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend_name(backend)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # inspect.signature(cls) shows torch's constructor and the backend keyword
        torch_cls = next((c for c in cls.__mro__ if c.__module__.startswith("torch.")), None)
        if torch_cls is None:  # a mixin (_BatchNormBridge, ...)
            return
        sig = inspect.signature(torch_cls.__init__)
        params = [p for name, p in sig.parameters.items() if name != "self"]
        params.append(inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation="str | Backend | None"))
        cls.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        return base if self.backend is None else f"{base}, backend={self.backend!r}"


# ---------------------------------------------------------------------- BatchNorm
class _BatchNormBridge(_Bridged):
    @_eager
    def forward(self, input: Tensor) -> Tensor:
        """torch's ``_BatchNorm.forward``, line for line, with normcore's ``batch_norm``."""
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
            else:
                factor = self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        pass_stats = not self.training or self.track_running_stats
        return NTF.batch_norm(input, self.running_mean if pass_stats else None,
                              self.running_var if pass_stats else None, self.weight, self.bias,
                              bn_training, factor, self.eps, backend=self.backend)


class BatchNorm1d(_BatchNormBridge, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` computed by normcore."""


class BatchNorm2d(_BatchNormBridge, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` computed by normcore."""


class BatchNorm3d(_BatchNormBridge, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` computed by normcore."""


# ---------------------------------------------------------------------- InstanceNorm
class _InstanceNormBridge(_Bridged):
    @_eager
    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        """torch's ``_InstanceNorm._apply_instance_norm`` with normcore's ``instance_norm``
        (torch's forward around it checks the input and handles unbatched input)."""
        return NTF.instance_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0, self.eps, backend=self.backend)


class InstanceNorm1d(_InstanceNormBridge, torch.nn.InstanceNorm1d):
    """``torch.nn.InstanceNorm1d`` computed by normcore."""


class InstanceNorm2d(_InstanceNormBridge, torch.nn.InstanceNorm2d):
    """``torch.nn.InstanceNorm2d`` computed by normcore."""


class InstanceNorm3d(_InstanceNormBridge, torch.nn.InstanceNorm3d):
    """``torch.nn.InstanceNorm3d`` computed by normcore."""


# ---------------------------------------------------------------------- row and group norms
class LayerNorm(_Bridged, torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` computed by normcore."""

    @_eager
    def forward(self, input: Tensor) -> Tensor:
        return NTF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps,
                              backend=self.backend)


class GroupNorm(_Bridged, torch.nn.GroupNorm):
    """``torch.nn.GroupNorm`` computed by normcore."""

    @_eager
    def forward(self, input: Tensor) -> Tensor:
        return NTF.group_norm(input, self.num_groups, self.weight, self.bias, self.eps,
                              backend=self.backend)


class RMSNorm(_Bridged, torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` computed by normcore."""

    @_eager
    def forward(self, x: Tensor) -> Tensor:
        return NTF.rms_norm(x, self.normalized_shape, self.weight, self.eps,
                            backend=self.backend)


#: torch's class -> its normcore drop-in (exact classes only).
DROP_INS: dict[type[torch.nn.Module], type[torch.nn.Module]] = {
    torch.nn.BatchNorm1d: BatchNorm1d, torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.BatchNorm3d: BatchNorm3d, torch.nn.InstanceNorm1d: InstanceNorm1d,
    torch.nn.InstanceNorm2d: InstanceNorm2d, torch.nn.InstanceNorm3d: InstanceNorm3d,
    torch.nn.LayerNorm: LayerNorm, torch.nn.GroupNorm: GroupNorm, torch.nn.RMSNorm: RMSNorm,
}
