"""The weight-decay split that matters for normalization: which parameters to decay.

Weight decay (L2, or the decoupled form) pulls every decayed parameter towards zero. That is the
intended regularization for the weights of convolutions and linear layers, but not for:

* **normalization layers' weights and biases** (BatchNorm, InstanceNorm, LayerNorm, GroupNorm,
  RMSNorm). The normalization already fixes the scale of its output; its affine ``weight`` is the
  one knob that sets that scale back. Decaying it shrinks every normalized activation towards
  zero, which the next layer must undo, so the decay fights the normalization instead of
  limiting capacity (and with a following ReLU it can kill channels). Its ``bias`` is a shift.
* **biases** of any layer: a bias adds one number per output, carries almost no capacity to
  regularize, and pulling it to zero only biases the fit.

The weights of layers *followed* by a normalization are scale-invariant (the normalization
removes their norm); decaying them is still standard and useful: it keeps their norm small and so
their effective learning rate up (van Laarhoven 2017; Zhang et al. 2019). The split below is the
usual recipe (e.g. timm's and nanoGPT's): decay those weights, and put every normalization
parameter and every bias in a group with ``weight_decay=0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .._parameter import Parameter

__all__ = ["param_groups", "is_normalization"]


def is_normalization(module: Any) -> bool:
    """Whether ``module`` is a normalization layer: normcore's BatchNorm/InstanceNorm/LayerNorm/
    GroupNorm/RMSNorm, torch.nn's normalization layers, or any object declaring
    ``is_normalization = True``."""
    declared = getattr(type(module), "is_normalization", None)
    if declared is not None:
        return bool(declared)
    from ..modules import GroupNorm, LayerNorm, RMSNorm, _NormBase

    if isinstance(module, _NormBase | LayerNorm | GroupNorm | RMSNorm):
        return True
    for cls in type(module).__mro__:  # torch.nn's, without importing torch
        if cls.__module__.startswith("torch.nn.modules.") and cls.__name__ in (
                "_NormBase", "LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm"):
            return True
    return False


def _named_modules(model: Any) -> Iterable[tuple[str, Any]]:
    if hasattr(model, "named_modules"):          # a container (torch-style): (name, module) pairs
        return model.named_modules()
    if isinstance(model, Mapping):
        return model.items()
    if hasattr(model, "named_parameters"):       # a single module
        return [("", model)]
    items = list(model)
    if all(isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str) for m in items):
        return items
    return [(str(i), m) for i, m in enumerate(items)]


def param_groups(model: Any, weight_decay: float, *, with_names: bool = False,
                 **options: Any) -> list[dict[str, Any]]:
    """Split a model's parameters into a decayed group and a ``weight_decay=0`` group, ready for
    any optimizer (``SGD(param_groups(model, 5e-4), lr=0.1, momentum=0.9)``).

    ``model`` is a module (anything with ``named_parameters()``), an object with
    ``named_modules()`` yielding ``(name, module)`` pairs, a mapping ``{name: module}``, or an
    iterable of modules or of ``(name, module)`` pairs. A parameter goes to the no-decay group
    when its module is a normalization layer (:func:`is_normalization`) or its name is ``bias``
    or ends in ``.bias``/``_bias``; every other parameter is decayed. ``options`` (e.g. ``lr``)
    are added to both groups; ``with_names`` gives the parameters as ``(name, Parameter)``
    pairs (recorded as the groups' ``"param_names"``, as torch does). Both groups are always
    returned (one may be empty), decayed first, so the layout of a state dict does not depend
    on the model. A Parameter shared by several modules is listed once.

    >>> import numpy as np, normcore
    >>> from normcore.optim import SGD, param_groups
    >>> class Linear(normcore.Module):
    ...     def __init__(self):
    ...         super().__init__(dtype=np.float64)
    ...         self._param("weight", (2, 3), 0.1)
    ...         self._param("bias", (2,), 0.0)
    >>> model = {"fc": Linear(), "norm": normcore.LayerNorm(2)}
    >>> groups = param_groups(model, weight_decay=1e-4, with_names=True)
    >>> [(g["weight_decay"], [n for n, _ in g["params"]]) for g in groups]
    [(0.0001, ['fc.weight']), (0.0, ['fc.bias', 'norm.weight', 'norm.bias'])]
    >>> opt = SGD(groups, lr=0.1, momentum=0.9)
    """
    decay: list[Any] = []
    no_decay: list[Any] = []
    seen: set[int] = set()
    for prefix, module in _named_modules(model):
        if not hasattr(module, "named_parameters"):
            raise TypeError(f"param_groups: {prefix or 'the model'} ({type(module).__name__}) has "
                            "no named_parameters()")
        norm = is_normalization(module)
        try:
            named = module.named_parameters(recurse=False)  # torch containers: own ones only
        except TypeError:
            named = module.named_parameters()
        for name, p in named:
            if id(p) in seen:
                continue
            seen.add(id(p))
            if not isinstance(p, Parameter) and not hasattr(p, "grad"):
                raise TypeError(f"param_groups: {name!r} is not a Parameter")
            full = f"{prefix}.{name}" if prefix else name
            leaf = full.rsplit(".", 1)[-1]
            is_bias = leaf == "bias" or leaf.endswith("_bias")
            (no_decay if norm or is_bias else decay).append((full, p) if with_names else p)
    return [{"params": decay, "weight_decay": weight_decay, **options},
            {"params": no_decay, "weight_decay": 0.0, **options}]
