"""Stochastic gradient descent, exactly as :class:`torch.optim.SGD` (torch 2.13)."""

from __future__ import annotations

from typing import Any

from .._parameter import Parameter
from .optimizer import Optimizer, assign, check_default_only, check_real

__all__ = ["SGD"]


class SGD(Optimizer):
    """SGD with optional momentum, dampening, Nesterov momentum, L2 weight decay and
    ``maximize``, with torch.optim.SGD's arguments, defaults, checks and update order::

        g = -grad if maximize else grad
        g = g + weight_decay * p                     (if weight_decay != 0; coupled, L2)
        b = g (first step), else b = momentum * b + (1 - dampening) * g   (if momentum != 0)
        g = g + momentum * b if nesterov else b
        p = p - lr * g

    ``foreach``, ``differentiable`` and ``fused`` are accepted for compatibility with torch's
    signature and state dicts, but only their defaults (None/False): anything else raises
    NotImplementedError. The update runs on the Parameters' own arrays (NumPy, CuPy, ...).

    >>> import numpy as np, normcore
    >>> from normcore.optim import SGD
    >>> w = normcore.Parameter(np.array([1.0]))
    >>> opt = SGD([w], lr=0.1, momentum=0.9)
    >>> for _ in range(2):
    ...     w.grad = np.array([1.0])
    ...     opt.step()
    >>> round(float(w.data[0]), 10)   # 1 - 0.1*1 - 0.1*(0.9*1 + 1)
    0.71
    >>> opt.state_dict()["state"][0]["momentum_buffer"].tolist()
    [1.9]
    """

    _default_only = ("foreach", "differentiable", "fused")

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None) -> None:
        check_real(lr, "lr")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr, "momentum": momentum, "dampening": dampening,
            "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize,
            "foreach": foreach, "differentiable": differentiable, "fused": fused,
        }
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        check_default_only("SGD", foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)

    def _after_load(self) -> None:
        super()._after_load()
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    def _update_group(self, group: dict[str, Any], params: list[Parameter]) -> None:
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        weight_decay, nesterov = group["weight_decay"], group["nesterov"]
        for p in params:
            grad = -p.grad if group["maximize"] else p.grad
            if weight_decay != 0:
                grad = grad + weight_decay * p.data
            if momentum != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    state["momentum_buffer"] = buf = grad + 0  # a copy (grad may be p.grad)
                else:
                    assign(state, "momentum_buffer", buf * momentum + (1 - dampening) * grad)
                    buf = state["momentum_buffer"]
                grad = grad + momentum * buf if nesterov else buf
            assign(p, "data", p.data + (-lr) * grad)
