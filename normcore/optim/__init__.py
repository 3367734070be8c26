"""``normcore.optim``: SGD, Adam and AdamW with torch.optim's exact update rules, defaults,
argument checks, parameter groups and ``state_dict`` layout, over normcore Parameters on any
backend (the update runs on the Parameters' own arrays: NumPy, CuPy, ...), reading the gradients
that ``backward()`` accumulated; and :func:`param_groups`, the decay / no-decay split for models
with normalization layers.

>>> import numpy as np, normcore
>>> from normcore.optim import SGD, param_groups
>>> bn = normcore.BatchNorm1d(3, dtype=np.float64)
>>> opt = SGD(param_groups(bn, weight_decay=1e-4), lr=0.01, momentum=0.9)
>>> y = bn(np.random.default_rng(0).normal(size=(8, 3)))
>>> _ = bn.backward(y)                       # the gradient of sum(y**2) / 2
>>> opt.step(); opt.zero_grad()
>>> bn.weight.data.round(4).tolist()         # 1 - 0.01 * sum(x_hat**2): no decay on a norm
[0.92, 0.92, 0.92]

Only the single-tensor (for-loop) update is implemented; ``foreach``, ``fused``, ``capturable``
and ``differentiable`` are accepted with their default values only.
"""

from .adam import Adam, AdamW
from .groups import is_normalization, param_groups
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "param_groups", "is_normalization"]
