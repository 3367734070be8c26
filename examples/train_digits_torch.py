"""The torch twin of examples/train_digits.py: the same network written with torch.nn and
autograd, started from the normcore network's initial weights, fed the same mini-batches, the
same dropout masks (normcore's hash of (seed, index), through
``normcore.backend.dropout_keep_mask``) and the same learning-rate schedule, and trained by
torch.optim.SGD with the same parameter groups. In float64 the two losses agree to 1e-9 at every
step (tests/test_train_digits.py checks a few steps; ``train_digits.py --twin`` plots 100).

    .venv/bin/python examples/train_digits_torch.py --steps 100
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_digits as td  # noqa: E402

from normcore.backend import dropout_keep_mask, dropout_scale  # noqa: E402


def torch_net(net: td.Net) -> Any:
    """A torch.nn.Module computing what ``net`` computes, with copies of its current weights."""
    import torch
    import torch.nn.functional as tF

    def param(a: np.ndarray) -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.from_numpy(np.array(a, copy=True)))

    dtype = torch.float64 if net.fc.params["weight"].data.dtype == np.float64 else torch.float32

    class TorchNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1_weight = param(net.conv1.params["weight"].data)
            self.gn = torch.nn.GroupNorm(4, 16, eps=net.gn.eps, dtype=dtype)
            self.conv2_weight = param(net.conv2.params["weight"].data)
            self.bn = torch.nn.BatchNorm2d(32, eps=net.bn.eps, momentum=net.bn.momentum,
                                           dtype=dtype)
            self.fc = torch.nn.Linear(512, 10, dtype=dtype)
            with torch.no_grad():
                for mod, src in ((self.gn, net.gn), (self.bn, net.bn)):
                    mod.weight.copy_(torch.from_numpy(src.weight.data))
                    mod.bias.copy_(torch.from_numpy(src.bias.data))
                self.fc.weight.copy_(torch.from_numpy(net.fc.params["weight"].data))
                self.fc.bias.copy_(torch.from_numpy(net.fc.params["bias"].data))
            self.p_drop = net.p_drop

        def forward(self, x: torch.Tensor, seed: int) -> torch.Tensor:
            w = self.conv1_weight  # weight standardization: biased variance per filter, eps 1e-5
            mean = w.mean(dim=(1, 2, 3), keepdim=True)
            var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
            h = tF.conv2d(x, (w - mean) / torch.sqrt(var + 1e-5), padding=1)
            h = torch.relu(self.gn(h))
            h = torch.relu(self.bn(tF.conv2d(h, self.conv2_weight, padding=1)))
            h = tF.avg_pool2d(h, 2).flatten(1)
            if self.training and self.p_drop > 0:  # normcore's mask, applied as it applies it
                keep = torch.from_numpy(dropout_keep_mask(tuple(h.shape), self.p_drop, seed))
                h = h * keep.to(h.dtype) * dropout_scale(self.p_drop)
            return self.fc(h)

    return TorchNet()


# the torch parameter of each normcore parameter name
_NAMES = {"conv1.weight": "conv1_weight", "conv2.weight": "conv2_weight",
          "gn.weight": "gn.weight", "gn.bias": "gn.bias", "bn.weight": "bn.weight",
          "bn.bias": "bn.bias", "fc.weight": "fc.weight", "fc.bias": "fc.bias"}


def twin_losses(steps: int = 100, epochs: int = 30, batch_size: int = 64, lr: float = 0.05,
                momentum: float = 0.9, weight_decay: float = 5e-4, decay: str = "coupled",
                seed: int = 0, dtype: str = "float64", n_threads: int | None = 1
                ) -> dict[str, Any]:
    """Train normcore's network and its torch twin side by side for ``steps`` steps; return both
    loss sequences (and both networks)."""
    import torch

    with td.threads(n_threads):
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(n_threads or torch_threads)
        try:
            return _twin(steps, epochs, batch_size, lr, momentum, weight_decay, decay, seed,
                         dtype)
        finally:
            torch.set_num_threads(torch_threads)


def _twin(steps: int, epochs: int, batch_size: int, lr: float, momentum: float,
          weight_decay: float, decay: str, seed: int, dtype: str) -> dict[str, Any]:
    import torch

    dt = np.dtype(dtype)
    xtr, ytr, _, _ = td.load_data(dt, seed)
    net = td.Net(seed, dt)
    tnet = torch_net(net)
    opt = td.make_optimizer(net, lr, momentum, weight_decay, decay)
    tparams = dict(tnet.named_parameters())
    tgroups = [{**{k: v for k, v in g.items() if k not in ("params", "param_names")},
                "params": [tparams[_NAMES[n]] for n in g["param_names"]]}
               for g in opt.param_groups]
    topt = torch.optim.SGD(tgroups, lr=lr, momentum=momentum, nesterov=True)
    plan = td.batches(len(ytr), batch_size, epochs, seed)
    schedule = sum(len(e) for e in plan)
    flat = [idx for epoch in plan for idx in epoch][:steps]
    ours, theirs = [], []
    for step, idx in enumerate(flat):
        rate = td.lr_at(step, schedule, lr)
        for g in opt.param_groups + topt.param_groups:
            g["lr"] = rate
        # normcore
        logits = net.forward(xtr[idx], td.dropout_seed(seed, step))
        loss, dlogits = td.cross_entropy(logits, ytr[idx])
        opt.zero_grad()
        net.backward(dlogits)
        td.decay_weights(opt)
        opt.step()
        ours.append(loss)
        # torch
        tlogits = tnet(torch.from_numpy(xtr[idx]), td.dropout_seed(seed, step))
        tloss = torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(ytr[idx]))
        topt.zero_grad()
        tloss.backward()
        with torch.no_grad():
            for g in topt.param_groups:
                if g["decoupled"]:
                    for p in g["params"]:
                        p.mul_(1.0 - g["lr"] * g["decoupled"])
        topt.step()
        theirs.append(float(tloss.detach()))
    return {"normcore": ours, "torch": theirs, "net": net, "torch_net": tnet}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="normcore vs its torch twin, step by step")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--decay", choices=["coupled", "decoupled"], default="coupled")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = ap.parse_args(argv)
    out = twin_losses(args.steps, decay=args.decay, dtype=args.dtype)
    diff = np.abs(np.asarray(out["normcore"]) - np.asarray(out["torch"]))
    for i in range(0, len(diff), max(1, len(diff) // 10)):
        print(f"step {i + 1:4d}: normcore {out['normcore'][i]:.15f}  torch "
              f"{out['torch'][i]:.15f}  |diff| {diff[i]:.2e}")
    print(f"max |loss difference| over {len(diff)} steps: {diff.max():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
