"""Generate the torch golden vectors in ``golden.npz`` (run once; needs torch, which normcore does not).

    python normcore/testing/golden/make_golden.py

Each case builds a ``torch.nn`` layer with randomized affine parameters, runs three training steps
(forward + backward with a random grad_output, gradients left to accumulate as in torch) and one
evaluation step, and stores every input, output, gradient and the state_dict after each step.
Weight standardization is torch autograd over its formula. The case list is ``CASES`` below and is
stored in the file too, so the tests need nothing but NumPy to replay it.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent


def _cases() -> list[dict]:
    cases = []

    def add(layer, shape, steps=3, **kwargs):
        for dtype in ("float64", "float32"):
            tag = ",".join(f"{k}={v}" for k, v in kwargs.items())
            cid = f"{layer}[{'x'.join(map(str, shape))}]({tag})-{dtype}"
            cases.append({"id": cid, "layer": layer, "shape": list(shape), "kwargs": kwargs,
                          "dtype": dtype, "steps": steps})

    for layer, shape in (("BatchNorm1d", (6, 3)), ("BatchNorm1d", (4, 3, 5)),
                         ("BatchNorm2d", (3, 4, 3, 5)), ("BatchNorm3d", (2, 3, 2, 3, 2))):
        c = shape[1]
        add(layer, shape, num_features=c)
        add(layer, shape, num_features=c, momentum=None)
        add(layer, shape, num_features=c, affine=False, momentum=0.3)
        add(layer, shape, num_features=c, track_running_stats=False)
        add(layer, shape, num_features=c, affine=False, track_running_stats=False, eps=1e-3)
    for layer, shape in (("InstanceNorm1d", (3, 4, 7)), ("InstanceNorm1d", (4, 7)),
                         ("InstanceNorm2d", (2, 3, 4, 5)), ("InstanceNorm2d", (3, 4, 5)),
                         ("InstanceNorm3d", (2, 3, 2, 3, 4))):
        c = shape[-1 - int(layer[-2])]
        add(layer, shape, num_features=c)
        add(layer, shape, num_features=c, affine=True)
        add(layer, shape, num_features=c, affine=True, track_running_stats=True)
        add(layer, shape, num_features=c, track_running_stats=True, momentum=None)
    add("LayerNorm", (5, 8), normalized_shape=[8])
    add("LayerNorm", (2, 3, 4, 5), normalized_shape=[4, 5])
    add("LayerNorm", (3, 7), normalized_shape=[7], elementwise_affine=False)
    add("LayerNorm", (3, 2, 6), normalized_shape=[6], bias=False, eps=1e-3)
    add("GroupNorm", (3, 6, 5), num_groups=3, num_channels=6)
    add("GroupNorm", (2, 8, 3, 3), num_groups=2, num_channels=8, affine=False)
    add("GroupNorm", (2, 4, 2, 2, 3), num_groups=4, num_channels=4, eps=1e-2)
    add("GroupNorm", (4, 6), num_groups=1, num_channels=6)
    add("RMSNorm", (5, 8), normalized_shape=[8])
    add("RMSNorm", (2, 3, 4, 5), normalized_shape=[4, 5], eps=1e-4)
    add("RMSNorm", (3, 6), normalized_shape=[6], elementwise_affine=False)
    add("WeightStandardization", (4, 3, 3, 3), eps=1e-5)
    add("WeightStandardization", (5, 2, 3), eps=1e-5, unbiased=True, eps_in_root=False)
    return cases


CASES = _cases()


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

    if case["layer"] == "WeightStandardization":
        w = tensor(0.3, 2.0).requires_grad_()
        y = _ws(w, **case["kwargs"])
        dy = tensor()
        y.backward(dy)
        out.update({"step0.x": w.detach().numpy(), "step0.dy": dy.numpy(),
                    "step0.y": y.detach().numpy(), "step0.dx": w.grad.numpy()})
        return out

    module = getattr(torch.nn, case["layer"])(**case["kwargs"], dtype=dtype)
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


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(20261123)
    arrays: dict[str, np.ndarray] = {}
    for i, case in enumerate(CASES):
        for k, v in run_case(case, rng).items():
            arrays[f"{i}/{k}"] = v
    arrays["cases"] = np.array(json.dumps(CASES))
    arrays["torch_version"] = np.array(torch.__version__)
    np.savez_compressed(HERE / "golden.npz", **arrays)
    print(f"wrote {len(CASES)} cases, {len(arrays)} arrays to {HERE / 'golden.npz'}")


if __name__ == "__main__":
    main()
