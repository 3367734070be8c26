"""Adam and AdamW, exactly as :class:`torch.optim.Adam` and :class:`torch.optim.AdamW`
(torch 2.13)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._parameter import Parameter
from .optimizer import (
    Optimizer,
    assign,
    check_default_only,
    check_real,
    namespace,
    to_host,
)

__all__ = ["Adam", "AdamW"]


def _lerp(start: Any, end: Any, weight: float) -> Any:
    """torch's ``lerp`` with a scalar weight (the formula it switches at weight 0.5)."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


class Adam(Optimizer):
    """Adam (Kingma & Ba), with optional AMSGrad and ``maximize``; ``weight_decay`` is coupled
    (an L2 term added to the gradient) unless ``decoupled_weight_decay=True`` (then it is AdamW).
    torch.optim.Adam's arguments, defaults, checks and update order::

        t += 1;  g = -grad if maximize else grad
        p = p * (1 - lr * wd)  if decoupled  else  g = g + wd * p      (if wd != 0)
        m = lerp(m, g, 1 - beta1);  v = v * beta2 + (1 - beta2) * g * g
        v_hat = max(v_max, v) if amsgrad else v                       (kept as max_exp_avg_sq)
        p = p - lr / (1 - beta1**t) * m / (sqrt(v_hat) / sqrt(1 - beta2**t) + eps)

    The state is torch's: ``step`` (a float32 scalar, counted in float32 as torch counts it),
    ``exp_avg``, ``exp_avg_sq`` and, with AMSGrad, ``max_exp_avg_sq``. ``foreach``,
    ``capturable``, ``differentiable`` and ``fused`` take only their defaults (None/False);
    anything else raises NotImplementedError. ``lr`` and ``betas`` are floats (no tensors).

    >>> import numpy as np, normcore
    >>> from normcore.optim import Adam
    >>> w = normcore.Parameter(np.array([1.0, -1.0]))
    >>> opt = Adam([w], lr=0.1)
    >>> w.grad = np.array([3.0, -0.5])
    >>> opt.step()                  # the first step moves each weight by about lr
    >>> np.round(w.data, 6).tolist()
    [0.9, -0.9]
    >>> sd = opt.state_dict()
    >>> sd["state"][0]["step"], sd["param_groups"][0]["betas"]
    (array(1., dtype=float32), (0.9, 0.999))
    """

    _default_only = ("foreach", "capturable", "differentiable", "fused")

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False) -> None:
        check_real(lr, "lr")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not (isinstance(betas[0], float) and isinstance(betas[1], float)):
            if hasattr(betas[0], "shape") and hasattr(betas[1], "shape"):
                raise TypeError("normcore.optim takes betas as floats, not tensors")
            raise ValueError("betas must be either both floats or both Tensors")
        defaults = {
            "lr": lr, "betas": (float(betas[0]), float(betas[1])), "eps": eps,
            "weight_decay": weight_decay, "amsgrad": amsgrad, "maximize": maximize,
            "foreach": foreach, "capturable": capturable, "differentiable": differentiable,
            "fused": fused, "decoupled_weight_decay": decoupled_weight_decay,
        }
        check_default_only(type(self).__name__, foreach=foreach, capturable=capturable,
                           differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)

    def _after_load(self) -> None:
        super()._after_load()
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("decoupled_weight_decay", False)
            group.setdefault("fused", None)

    def _load_value(self, param: Parameter, key: str, value: Any) -> Any:
        if key == "step":  # torch keeps the saved step's dtype, and makes a number float32
            step = to_host(value)
            return step if step.dtype.kind == "f" else step.astype(np.float32)
        return super()._load_value(param, key, value)

    def _update_group(self, group: dict[str, Any], params: list[Parameter]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        weight_decay, amsgrad = group["weight_decay"], group["amsgrad"]
        for p in params:
            grad = -p.grad if group["maximize"] else p.grad
            state = self.state[p]
            if len(state) == 0:
                state["step"] = np.zeros((), np.float32)  # on the host, as torch's
                zeros = namespace(p.data).zeros_like
                state["exp_avg"] = zeros(p.data)
                state["exp_avg_sq"] = zeros(p.data)
                if amsgrad:
                    state["max_exp_avg_sq"] = zeros(p.data)
            state["step"] = np.asarray(state["step"] + 1, dtype=state["step"].dtype)
            if weight_decay != 0:
                if group["decoupled_weight_decay"]:
                    assign(p, "data", p.data * (1 - lr * weight_decay))
                else:
                    grad = grad + weight_decay * p.data
            assign(state, "exp_avg", _lerp(state["exp_avg"], grad, 1 - beta1))
            assign(state, "exp_avg_sq", state["exp_avg_sq"] * beta2 + (1 - beta2) * grad * grad)

            step = float(state["step"])
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
            xp = namespace(p.data)
            if amsgrad:
                assign(state, "max_exp_avg_sq", xp.maximum(state["max_exp_avg_sq"],
                                                           state["exp_avg_sq"]))
                denom = xp.sqrt(state["max_exp_avg_sq"]) / bias_correction2_sqrt + eps
            else:
                denom = xp.sqrt(state["exp_avg_sq"]) / bias_correction2_sqrt + eps
            assign(p, "data", p.data + (-step_size) * state["exp_avg"] / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p = p * (1 - lr * weight_decay)``
    before the Adam update, so the decay does not pass through the moment estimates. As
    torch.optim.AdamW: ``weight_decay`` defaults to 1e-2, and the groups record
    ``decoupled_weight_decay=True``.

    >>> import numpy as np, normcore
    >>> from normcore.optim import AdamW
    >>> w = normcore.Parameter(np.array([2.0]))
    >>> opt = AdamW([w], lr=0.1, weight_decay=0.5)
    >>> w.grad = np.array([0.0])      # no gradient: only the decay moves the weight
    >>> opt.step()
    >>> w.data.tolist()               # 2 * (1 - 0.1 * 0.5)
    [1.9]
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True)

    def _after_load(self) -> None:
        super()._after_load()
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True

