"""``convert(model)``: every torch norm layer of a model replaced by its normcore drop-in.

A layer is converted when its class is exactly one of torch's ``BatchNorm1d/2d/3d``,
``InstanceNorm1d/2d/3d``, ``LayerNorm``, ``GroupNorm`` or ``RMSNorm``. Subclasses (which may
override ``forward``), ``SyncBatchNorm``, the ``LazyBatchNorm*``/``LazyInstanceNorm*`` classes and
parametrized layers are left to torch, with a warning naming them.

The drop-in takes over the layer's whole state, not a copy of it: the same Parameter and buffer
objects (an optimizer built on the model keeps working when ``inplace=True``), the training flag,
hooks (their handles still remove them) and every other attribute. ``state_dict`` keys do not
change, so checkpoints load across converted and unconverted models.
"""

from __future__ import annotations

import copy
import warnings

import torch

from normcore.backend import Backend
from normcore.torch._modules import DROP_INS, backend_name

__all__ = ["convert", "unconvert"]

_UNDO = {v: k for k, v in DROP_INS.items()}
_NORM_BASES = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm,
               torch.nn.RMSNorm)


def _retyped(old: torch.nn.Module, cls: type[torch.nn.Module]) -> torch.nn.Module:
    """An object of ``cls`` holding ``old``'s state (the same inner dicts: parameters, buffers,
    hooks)."""
    new = cls.__new__(cls)
    new.__dict__.update(old.__dict__)
    return new


def _walk(module: torch.nn.Module, table: dict[type, type], memo: dict[int, torch.nn.Module],
          skipped: list[str], prefix: str, backend: str | None, setting: bool
          ) -> torch.nn.Module:
    if id(module) in memo:  # a layer shared by several parents stays shared
        return memo[id(module)]
    cls = table.get(type(module))
    if cls is not None:
        new = _retyped(module, cls)
        if setting:
            new.backend = backend
        else:
            new.__dict__.pop("backend", None)
        memo[id(module)] = new
        return new
    if setting and isinstance(module, _NORM_BASES) and type(module) not in _UNDO:
        skipped.append(f"{prefix or '(the model)'}: {type(module).__module__}."
                       f"{type(module).__qualname__}")
    memo[id(module)] = module
    for name, child in list(module._modules.items()):
        if child is not None:
            new_child = _walk(child, table, memo, skipped, f"{prefix}.{name}" if prefix else name,
                              backend, setting)
            if new_child is not child:
                module._modules[name] = new_child
    return module


def convert(model: torch.nn.Module, backend: str | Backend | None = None,
            inplace: bool = False) -> torch.nn.Module:
    """``model`` with every torch norm layer replaced by its normcore drop-in.

    ``backend``: the normcore backend the layers run on (None: normcore's default at each call).
    ``inplace=False`` (default) converts a deep copy and leaves ``model`` as it was (build the
    optimizer on the returned model's parameters); ``inplace=True`` converts ``model`` itself,
    whose Parameter objects stay the same. Returns the converted model (a norm layer given as the
    model itself comes back as its drop-in). Layers already converted get the new backend.

    >>> import torch, normcore.torch
    >>> net = normcore.torch.convert(torch.nn.Sequential(torch.nn.LayerNorm(8)))
    >>> type(net[0]).__module__, isinstance(net[0], torch.nn.LayerNorm)
    ('normcore.torch._modules', True)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert() takes a torch.nn.Module, got {type(model).__name__}")
    name = backend_name(backend)
    if not inplace:
        model = copy.deepcopy(model)
    table = dict(DROP_INS)
    table.update({c: c for c in _UNDO})  # already converted: only the backend changes
    skipped: list[str] = []
    out = _walk(model, table, {}, skipped, "", name, True)
    if skipped:
        warnings.warn("normcore.torch.convert left these norm layers to torch (only torch's own "
                      "BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d, LayerNorm, GroupNorm and RMSNorm "
                      "classes are converted, not subclasses, SyncBatchNorm or lazy layers): "
                      + "; ".join(skipped), stacklevel=2)
    return out


def unconvert(model: torch.nn.Module, inplace: bool = False) -> torch.nn.Module:
    """The inverse of :func:`convert`: every normcore drop-in back to its torch class, with the
    same state.

    >>> import torch, normcore.torch
    >>> type(normcore.torch.unconvert(normcore.torch.LayerNorm(8))) is torch.nn.LayerNorm
    True
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"unconvert() takes a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    return _walk(model, _UNDO, {}, [], "", None, False)
