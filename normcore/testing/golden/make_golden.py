"""Generate the torch golden vectors in ``golden.npz`` (run once; needs torch, which normcore does not).

    python normcore/testing/golden/make_golden.py [OUT.npz]

Each case builds a ``torch.nn`` layer with randomized affine parameters, runs three training steps
(forward + backward with a random grad_output, gradients left to accumulate as in torch) and one
evaluation step, and stores every input, output, gradient and the state_dict after each step.
Weight standardization is torch autograd over its formula. The case list is ``CASES`` below and is
stored in the file too, so the tests need nothing but NumPy to replay it. The cases come from the
layer table (``golden`` of each row of :mod:`normcore.layers`), in table order.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch

from normcore.layers import by_name, golden_cases

HERE = pathlib.Path(__file__).resolve().parent


#: The case list, from the layer table (normcore/layers.py: each row's ``golden`` configurations).
CASES = golden_cases()


def _ws(w: torch.Tensor, eps: float, unbiased: bool = False, eps_in_root: bool = True):
    flat = w.reshape(w.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    var = flat.var(dim=1, unbiased=unbiased, keepdim=True)
    denom = torch.sqrt(var + eps) if eps_in_root else torch.sqrt(var) + eps
    return ((flat - mean) / denom).reshape(w.shape)


def _state(module) -> dict[str, np.ndarray]:
    out = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
    for name in ("weight", "bias"):
        p = getattr(module, name, None)
        if p is not None and p.grad is not None:
            out[f"grad.{name}"] = p.grad.detach().numpy().copy()
    return out


def run_case(case: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    dtype = getattr(torch, case["dtype"])
    shape = tuple(case["shape"])
    out: dict[str, np.ndarray] = {}

    def tensor(offset: float = 0.0, scale: float = 1.0) -> torch.Tensor:
        return torch.tensor(rng.normal(offset, scale, size=shape), dtype=dtype)

    row = by_name(case["layer"])
    if row.functional == "weight_standardization":
        w = tensor(0.3, 2.0).requires_grad_()
        y = _ws(w, **case["kwargs"])
        dy = tensor()
        y.backward(dy)
        out.update({"step0.x": w.detach().numpy(), "step0.dy": dy.numpy(),
                    "step0.y": y.detach().numpy(), "step0.dx": w.grad.numpy()})
        return out

    module = getattr(torch.nn, row.torch)(**case["kwargs"], dtype=dtype)
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(module, name, None)
            if p is not None:
                p.copy_(torch.tensor(rng.uniform(0.5, 1.5, size=p.shape) if name == "weight"
                                     else rng.normal(size=p.shape), dtype=dtype))
    for k, v in _state(module).items():
        out[f"init.{k}"] = v
    for step in range(case["steps"] + 1):
        if step == case["steps"]:
            module.eval()
        x = tensor(offset=float(step), scale=1.0 + step).requires_grad_()
        y = module(x)
        dy = tensor()
        y.backward(dy)
        out.update({f"step{step}.x": x.detach().numpy(), f"step{step}.dy": dy.numpy(),
                    f"step{step}.y": y.detach().numpy(), f"step{step}.dx": x.grad.numpy()})
        for k, v in _state(module).items():
            out[f"step{step}.{k}"] = v
    return out


def main(out: pathlib.Path | None = None) -> None:
    """Write the vectors to ``out`` (default: ``golden.npz`` beside this script)."""
    out = out or HERE / "golden.npz"
    torch.manual_seed(0)
    rng = np.random.default_rng(20261123)
    arrays: dict[str, np.ndarray] = {}
    for i, case in enumerate(CASES):
        for k, v in run_case(case, rng).items():
            arrays[f"{i}/{k}"] = v
    arrays["cases"] = np.array(json.dumps(CASES))
    arrays["torch_version"] = np.array(torch.__version__)
    np.savez_compressed(out, **arrays)
    print(f"wrote {len(CASES)} cases, {len(arrays)} arrays to {out}")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else None)
