"""normcore.torch: normcore's kernels inside PyTorch models (CPU training and inference).

Importing this package imports torch (``pip install normcore[torch]``); ``import normcore`` never
does.

- :func:`convert` (and :func:`unconvert`): every torch norm layer of a model replaced by a drop-in
  computed by normcore, keeping parameters, buffers, train/eval mode, hooks and ``state_dict``
  keys.
- The drop-ins: ``BatchNorm1d/2d/3d``, ``InstanceNorm1d/2d/3d``, ``LayerNorm``, ``GroupNorm``,
  ``RMSNorm``, subclasses of torch's classes with torch's constructors (plus ``backend=``).
- Differentiable functions with ``torch.nn.functional``'s signatures: :func:`batch_norm`,
  :func:`instance_norm`, :func:`layer_norm`, :func:`group_norm`, :func:`rms_norm`.

Gradients are first order only (a second backward through a normcore layer raises torch's
``once_differentiable`` error); ``torch.compile`` runs each normcore layer eagerly between
compiled graphs.

>>> import torch, normcore.torch
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16))
>>> fast = normcore.torch.convert(model)              # a converted copy; model is unchanged
>>> x = torch.randn(4, 8)
>>> torch.allclose(fast(x), model(x), atol=1e-6)
True
>>> fast(x).sum().backward()                          # gradients through normcore's backward
>>> fast[1].weight.grad.shape
torch.Size([16])
"""

from normcore.torch._convert import convert, unconvert
from normcore.torch._functions import batch_norm, group_norm, instance_norm, layer_norm, rms_norm
from normcore.torch._modules import (
    DROP_INS,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
)

__all__ = [
    "convert", "unconvert", "DROP_INS",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d",
    "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm",
    "batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm",
]
