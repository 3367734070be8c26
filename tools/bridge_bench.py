"""Time normcore.torch against torch: one training step of whole models, and norm layers alone.

A training step is ``zero_grad``, forward, a mean-square loss, backward and an SGD step, of:

- resnet: transformers' ``ResNetModel`` (basic blocks, hidden sizes [64, 128], depths [1, 1],
  BatchNorm2d), input (16, 3, 64, 64);
- bert: transformers' ``BertModel``, BERT-small (hidden 256, 4 layers, 4 heads, intermediate 1024,
  LayerNorm), batch 16 x sequence 128;
- encoder: ``torch.nn.TransformerEncoder`` of 4 ``TransformerEncoderLayer`` (d_model 256, 4 heads,
  feed-forward 1024, LayerNorm), input (16, 128, 256);

each as built (random weights, no download) and as ``normcore.torch.convert(model)`` (backend
numba). The layers alone: forward + backward of torch's layer and of its drop-in. Original and
converted run round-robin (one step each, in turn) after a warm-up, and the table gives medians.
Threads: ``torch.set_num_threads(T)`` and Numba's ``T`` (``--threads``, default 2).

    .venv/bin/python tools/bridge_bench.py [--steps 10] [--threads 2] [--quick] [--only bert] [--json F]

Models need transformers (``make setup`` installs it); without it those rows are skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def _threads_from_argv() -> int:
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 2


# Numba reads its thread count when it is imported: set it before anything imports numba.
os.environ.setdefault("NUMBA_NUM_THREADS", str(_threads_from_argv()))

import torch  # noqa: E402

import normcore.torch as nt  # noqa: E402

Step = Callable[[], Any]


def _round_robin(steps: dict[str, Step], n: int, warmup: int) -> dict[str, float]:
    """Median ms of each step, run in turn (one of each per round) after ``warmup`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(warmup + n):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _train_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                output: Callable[[Any], torch.Tensor]) -> Step:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = output(model(**inputs)).float().square().mean()
        loss.backward()
        opt.step()

    return step


def _models(quick: bool) -> dict[str, tuple[torch.nn.Module, dict[str, torch.Tensor], Callable]]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, tuple[torch.nn.Module, dict[str, torch.Tensor], Callable]] = {}
    batch, seq, hw = (2, 16, 16) if quick else (16, 128, 64)
    try:
        from transformers import BertConfig, BertModel, ResNetConfig, ResNetModel
    except ImportError:
        print("transformers is not installed: resnet and bert skipped", file=sys.stderr)
    else:
        torch.manual_seed(0)
        resnet = ResNetModel(ResNetConfig(num_channels=3, embedding_size=64, hidden_sizes=[64, 128],
                                          depths=[1, 1], layer_type="basic"))
        out["resnet (BatchNorm2d)"] = (resnet, {"pixel_values": torch.randn(
            batch, 3, hw, hw, generator=g)}, lambda o: o.pooler_output)
        bert = BertModel(BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                    intermediate_size=1024, vocab_size=1000),
                         add_pooling_layer=False)
        out["bert-small (LayerNorm)"] = (bert, {"input_ids": torch.randint(
            0, 1000, (batch, seq), generator=g)}, lambda o: o.last_hidden_state)
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(256, 4, dim_feedforward=1024, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    out["4 x TransformerEncoderLayer (LayerNorm)"] = (
        encoder, {"src": torch.randn(batch, seq, 256, generator=g)}, lambda o: o)
    return out


def _layers(quick: bool) -> dict[str, tuple[torch.nn.Module, tuple[int, ...], Any]]:
    s = 8 if quick else 1
    return {
        "BatchNorm2d(64), (32, 64, 56, 56)": (torch.nn.BatchNorm2d(64), (32 // s, 64, 56, 56),
                                              torch.contiguous_format),
        "BatchNorm2d(64), channels_last": (torch.nn.BatchNorm2d(64), (32 // s, 64, 56, 56),
                                           torch.channels_last),
        "LayerNorm(1024), (8192, 1024)": (torch.nn.LayerNorm(1024), (8192 // s, 1024),
                                          torch.contiguous_format),
        "GroupNorm(32, 256), (16, 256, 28, 28)": (torch.nn.GroupNorm(32, 256),
                                                  (16 // s, 256, 28, 28), torch.contiguous_format),
        "RMSNorm(1024), (8192, 1024)": (torch.nn.RMSNorm(1024), (8192 // s, 1024),
                                        torch.contiguous_format),
    }


def _layer_step(layer: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor) -> Step:
    def step() -> None:
        xx = x.detach().requires_grad_()
        layer(xx).backward(gy)
    return step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--only", default="", help="only the rows whose name contains this")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    results: dict[str, list[dict[str, Any]]] = {"models": [], "layers": []}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"{numba.get_num_threads()} numba threads, backend {args.backend}, median of "
          f"{args.steps} steps after {args.warmup} warm-up rounds (round-robin)\n")

    print("| training step (fwd + bwd + SGD) | torch ms | normcore.torch ms | speedup |")
    print("| --- | ---: | ---: | ---: |")
    for name, (model, inputs, output) in _models(args.quick).items():
        if args.only not in name:
            continue
        conv = nt.convert(model, backend=args.backend)
        med = _round_robin({"torch": _train_step(copy.deepcopy(model), inputs, output),
                            "normcore": _train_step(conv, inputs, output)},
                           args.steps, args.warmup)
        results["models"].append({"name": name, **med})
        print(f"| {name} | {med['torch']:.1f} | {med['normcore']:.1f} | "
              f"{med['torch'] / med['normcore']:.2f}x |", flush=True)

    print("\n| layer alone (fwd + bwd, float32) | torch ms | normcore.torch ms | speedup |")
    print("| --- | ---: | ---: | ---: |")
    g = torch.Generator().manual_seed(1)
    for name, (layer, shape, fmt) in _layers(args.quick).items():
        if args.only not in name:
            continue
        x = torch.randn(shape, generator=g).contiguous(memory_format=fmt)
        gy = torch.randn(shape, generator=g).contiguous(memory_format=fmt)
        conv = nt.convert(layer, backend=args.backend)
        med = _round_robin({"torch": _layer_step(layer, x, gy), "normcore": _layer_step(conv, x, gy)},
                           args.steps, args.warmup)
        results["layers"].append({"name": name, **med})
        print(f"| {name} | {med['torch']:.2f} | {med['normcore']:.2f} | "
              f"{med['torch'] / med['normcore']:.2f}x |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
