"""Train a small convolutional network on scikit-learn's digits with NumPy and normcore alone.

    .venv/bin/python examples/train_digits.py --plot digits.png [--twin] [--epochs 30]

The network (8x8 grey images, 10 classes; 10k parameters)::

    conv 3x3, 1->16, weight-standardized  -> GroupNorm(4, 16) -> ReLU      (the GN+WS recipe)
    conv 3x3, 16->32                       -> BatchNorm2d(32)  -> ReLU -> 2x2 average pool
    flatten (512) -> Dropout(0.25) -> linear 512->10 -> softmax cross-entropy

The convolutions (im2col + matmul) and the linear layer, with their backward passes, are written
here in NumPy; the normalization layers, weight standardization, dropout and the optimizer
(``normcore.optim.SGD``: momentum, weight decay on conv/linear weights only, via
``normcore.optim.param_groups``) are normcore's. Everything runs in float64 by default.

``--twin`` also trains the same network written in torch (examples/train_digits_torch.py) from
the same initial weights, mini-batches and dropout masks for the first ``--twin-steps`` steps, and
plots how far the two losses ever are apart (float64: below 1e-9).

Data: ``sklearn.datasets.load_digits`` (1797 images, bundled with scikit-learn: no download),
a fixed 80/20 split (1437 train, 360 test).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

import normcore
import normcore.functional as F
from normcore.optim import SGD, param_groups

Array = np.ndarray


# ---------------------------------------------------------------------- NumPy layers
class Layer:
    """A minimal module: named Parameters, a training flag, forward and backward."""

    def __init__(self) -> None:
        self.params: dict[str, normcore.Parameter] = {}
        self.training = True

    def named_parameters(self) -> Iterator[tuple[str, normcore.Parameter]]:
        return iter(self.params.items())

    def _grad(self, name: str, g: Array) -> None:
        p = self.params[name]
        p.grad = g if p.grad is None else p.grad + g


class Conv2d(Layer):
    """3x3 (any k) convolution, stride 1, zero padding ``k // 2``, as im2col + one matmul;
    ``standardize=True`` convolves with the weight-standardized kernel (normcore's
    ``weight_standardization``, backward included)."""

    def __init__(self, cin: int, cout: int, k: int, rng: np.random.Generator, *,
                 standardize: bool = False, dtype: Any = np.float64) -> None:
        super().__init__()
        fan_in = cin * k * k
        w = rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(cout, cin, k, k)).astype(dtype)
        self.params["weight"] = normcore.Parameter(w)
        self.k, self.standardize = k, standardize

    def kernel(self) -> tuple[Array, Any]:
        w = self.params["weight"].data
        return F.weight_standardization(w) if self.standardize else (w, None)

    def forward(self, x: Array) -> Array:
        n, c, h, w_ = x.shape
        k, pad = self.k, self.k // 2
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # n,c,h,w,k,k
        cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * h * w_, -1)
        wk, ws_saved = self.kernel()
        out = cols @ wk.reshape(wk.shape[0], -1).T                               # (n*h*w, cout)
        self.saved = (x.shape, cols, wk, ws_saved)
        return np.ascontiguousarray(out.reshape(n, h, w_, -1).transpose(0, 3, 1, 2))

    def backward(self, dy: Array) -> Array:
        (n, c, h, w_), cols, wk, ws_saved = self.saved
        k, pad = self.k, self.k // 2
        d2 = dy.transpose(0, 2, 3, 1).reshape(n * h * w_, -1)                   # (n*h*w, cout)
        dwk = (d2.T @ cols).reshape(wk.shape)
        self._grad("weight", F.weight_standardization_backward(dwk, ws_saved)
                   if self.standardize else dwk)
        dcols = (d2 @ wk.reshape(wk.shape[0], -1)).reshape(n, h, w_, c, k, k)
        dxp = np.zeros((n, c, h + 2 * pad, w_ + 2 * pad), dy.dtype)
        for i in range(k):                                                       # col2im
            for j in range(k):
                dxp[:, :, i:i + h, j:j + w_] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
        return dxp[:, :, pad:pad + h, pad:pad + w_]


class Linear(Layer):
    def __init__(self, fin: int, fout: int, rng: np.random.Generator,
                 dtype: Any = np.float64) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(fin)
        self.params["weight"] = normcore.Parameter(
            rng.uniform(-bound, bound, size=(fout, fin)).astype(dtype))
        self.params["bias"] = normcore.Parameter(
            rng.uniform(-bound, bound, size=fout).astype(dtype))

    def forward(self, x: Array) -> Array:
        self.x = x
        return x @ self.params["weight"].data.T + self.params["bias"].data

    def backward(self, dy: Array) -> Array:
        self._grad("weight", dy.T @ self.x)
        self._grad("bias", dy.sum(axis=0))
        return dy @ self.params["weight"].data


def cross_entropy(logits: Array, labels: Array) -> tuple[float, Array]:
    """Mean softmax cross-entropy and its gradient with respect to the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -logp[np.arange(n), labels].mean()
    d = np.exp(logp)
    d[np.arange(n), labels] -= 1.0
    return float(loss), d / n


# ---------------------------------------------------------------------- the network
class Net:
    """conv(WS) -> GroupNorm -> ReLU -> conv -> BatchNorm2d -> ReLU -> avgpool -> Dropout ->
    linear. ``forward(x, dropout_seed)``: the dropout mask is normcore's hash of (seed, index),
    so a twin can apply the very same mask."""

    def __init__(self, seed: int = 0, dtype: Any = np.float64, p_drop: float = 0.25) -> None:
        rng = np.random.default_rng(seed)
        self.conv1 = Conv2d(1, 16, 3, rng, standardize=True, dtype=dtype)
        self.gn = normcore.GroupNorm(4, 16, dtype=dtype)
        self.conv2 = Conv2d(16, 32, 3, rng, dtype=dtype)
        self.bn = normcore.BatchNorm2d(32, dtype=dtype)
        self.fc = Linear(32 * 4 * 4, 10, rng, dtype=dtype)
        self.p_drop = p_drop
        self.training = True

    def named_modules(self) -> list[tuple[str, Any]]:
        return [("conv1", self.conv1), ("gn", self.gn), ("conv2", self.conv2), ("bn", self.bn),
                ("fc", self.fc)]

    def train(self, mode: bool = True) -> Net:
        self.training = mode
        for _, m in self.named_modules():
            if isinstance(m, normcore.Module):
                m.train(mode)
        return self

    def eval(self) -> Net:
        return self.train(False)

    def forward(self, x: Array, dropout_seed: int = 0) -> Array:
        h = self.gn(self.conv1.forward(x))
        self.r1 = h > 0
        h = self.bn(self.conv2.forward(h * self.r1))
        self.r2 = h > 0
        h = h * self.r2
        n, c, hh, ww = h.shape
        h = h.reshape(n, c, hh // 2, 2, ww // 2, 2).mean(axis=(3, 5))          # 2x2 avg pool
        self.pool_shape = (n, c, hh, ww)
        h, self.drop = F.dropout(h.reshape(n, -1), self.p_drop, self.training,
                                 seed=dropout_seed)
        return self.fc.forward(h)

    def backward(self, dlogits: Array) -> None:
        d = F.dropout_backward(self.fc.backward(dlogits), self.drop)
        n, c, hh, ww = self.pool_shape
        d = d.reshape(n, c, hh // 2, 1, ww // 2, 1) / 4.0
        d = np.broadcast_to(d, (n, c, hh // 2, 2, ww // 2, 2)).reshape(n, c, hh, ww)
        d = self.bn.backward(d * self.r2)
        d = self.gn.backward(self.conv2.backward(d) * self.r1)
        self.conv1.backward(d)


# ---------------------------------------------------------------------- data and schedule
def load_data(dtype: Any = np.float64, seed: int = 0) -> tuple[Array, Array, Array, Array]:
    """scikit-learn's digits, scaled to zero mean and unit variance (train statistics), as
    (N, 1, 8, 8) images; a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float64)[:, None] / 16.0
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_train = int(0.8 * len(y))
    tr, te = order[:n_train], order[n_train:]
    mean, std = x[tr].mean(), x[tr].std()
    x = ((x - mean) / std).astype(dtype)
    return x[tr], y[tr], x[te], y[te]


def batches(n: int, batch_size: int, epochs: int, seed: int = 0) -> list[list[Array]]:
    """The mini-batches of each epoch (a fresh shuffle per epoch); twins use the same list."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for _ in range(epochs):
        order = rng.permutation(n)
        out.append([order[i:i + batch_size] for i in range(0, n, batch_size)])
    return out


def lr_at(step: int, total: int, lr: float, warmup: int = 20) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def dropout_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def make_optimizer(net: Net, lr: float, momentum: float, weight_decay: float,
                   decay: str) -> SGD:
    """SGD with momentum; the weights of the convolutions and of the linear layer are decayed,
    the normalization parameters and biases are not (normcore.optim.param_groups). ``decay``:
    ``coupled`` (torch's SGD weight_decay, an L2 term in the gradient) or ``decoupled``
    (``w *= 1 - lr * weight_decay`` before the step, applied by :func:`decay_weights`)."""
    groups = param_groups(net, weight_decay if decay == "coupled" else 0.0, with_names=True)
    groups[0]["decoupled"] = weight_decay if decay == "decoupled" else 0.0
    groups[1]["decoupled"] = 0.0
    return SGD(groups, lr=lr, momentum=momentum, nesterov=True)


def decay_weights(opt: SGD) -> None:
    for g in opt.param_groups:
        if g["decoupled"]:
            for p in g["params"]:
                p.data *= 1.0 - g["lr"] * g["decoupled"]


def evaluate(net: Net, x: Array, y: Array, batch: int = 512) -> tuple[float, float]:
    net.eval()
    losses, correct = 0.0, 0
    for i in range(0, len(y), batch):
        logits = net.forward(x[i:i + batch])
        loss, _ = cross_entropy(logits, y[i:i + batch])
        losses += loss * len(logits)
        correct += int((logits.argmax(axis=1) == y[i:i + batch]).sum())
    net.train()
    return losses / len(y), correct / len(y)


# ---------------------------------------------------------------------- training
@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` BLAS threads (threadpoolctl, a scikit-learn dependency) and ``n`` Numba
    threads for normcore's kernels, restoring both afterwards; ``None`` changes nothing. The
    layers here are small: on a 2-core machine shared with other work, 1 is fastest (spinning
    thread pools compete for the cores)."""
    if n is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(limits=n))
        except ImportError:
            pass
        try:
            import numba

            before = numba.get_num_threads()
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            stack.callback(numba.set_num_threads, before)
        except ImportError:
            pass
        yield


def train(epochs: int = 30, batch_size: int = 64, lr: float = 0.05, momentum: float = 0.9,
          weight_decay: float = 5e-4, decay: str = "coupled", seed: int = 0,
          dtype: Any = np.float64, max_steps: int | None = None,
          progress: bool = True, n_threads: int | None = 1) -> dict[str, Any]:
    """Train and return the history: per-step training loss and per-epoch test loss/accuracy."""
    with threads(n_threads):
        return _train(epochs, batch_size, lr, momentum, weight_decay, decay, seed, dtype,
                      max_steps, progress)


def _train(epochs: int, batch_size: int, lr: float, momentum: float, weight_decay: float,
           decay: str, seed: int, dtype: Any, max_steps: int | None,
           progress: bool) -> dict[str, Any]:
    xtr, ytr, xte, yte = load_data(dtype, seed)
    net = Net(seed, dtype)
    opt = make_optimizer(net, lr, momentum, weight_decay, decay)
    plan = batches(len(ytr), batch_size, epochs, seed)
    schedule = sum(len(e) for e in plan)               # the lr schedule's length
    total = schedule if max_steps is None else min(max_steps, schedule)
    hist: dict[str, Any] = {"step_loss": [], "epoch_step": [], "test_loss": [], "test_acc": [],
                            "train_acc": []}
    bar = _Bar(total, progress)
    step = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch_batches in plan:
        correct = seen = 0
        for idx in epoch_batches:
            if step >= total:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, schedule, lr)
            logits = net.forward(xtr[idx], dropout_seed(seed, step))
            loss, dlogits = cross_entropy(logits, ytr[idx])
            opt.zero_grad()
            net.backward(dlogits)
            decay_weights(opt)
            opt.step()
            hist["step_loss"].append(loss)
            correct += int((logits.argmax(axis=1) == ytr[idx]).sum())
            seen += len(idx)
            step += 1
            bar.update(step, loss, hist["test_acc"][-1] if hist["test_acc"] else None)
        if seen:
            test_loss, test_acc = evaluate(net, xte, yte)
            hist["epoch_step"].append(step)
            hist["test_loss"].append(test_loss)
            hist["test_acc"].append(test_acc)
            hist["train_acc"].append(correct / seen)
            bar.update(step, hist["step_loss"][-1], test_acc)
        if step >= total:
            break
    hist["seconds"] = time.perf_counter() - t0
    hist["cpu_seconds"] = time.process_time() - c0
    bar.close()
    hist["net"] = net
    return hist


class _Bar:
    """rich's progress bar when on a terminal (and rich is installed), else silence."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.progress = None
        if enabled and sys.stderr.isatty():
            try:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )
            except ImportError:
                return
            self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn())
            self.progress.start()
            self.task = self.progress.add_task("train", total=total, info="")

    def update(self, step: int, loss: float, acc: float | None) -> None:
        if self.progress is not None:
            info = f"loss {loss:.3f}" + ("" if acc is None else f"  test acc {acc:.1%}")
            self.progress.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def plot(hist: dict[str, Any], path: str, twin: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 3 if twin else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.2), layout="constrained")
    steps = np.arange(1, len(hist["step_loss"]) + 1)
    loss = np.asarray(hist["step_loss"])
    k = 15
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    ax = axes[0]
    ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="train (each step)")
    ax.plot(steps[k - 1:], smooth, color="tab:blue", lw=1.8, label=f"train ({k}-step mean)")
    ax.plot(hist["epoch_step"], hist["test_loss"], "o-", color="tab:orange", ms=3,
            label="test (each epoch)")
    ax.set(yscale="log", xlabel="step", ylabel="cross-entropy", title="loss")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    ax = axes[1]
    ax.plot(hist["epoch_step"], 100 * np.asarray(hist["train_acc"]), "o-", ms=3,
            color="tab:blue", label="train (during the epoch, dropout on)")
    ax.plot(hist["epoch_step"], 100 * np.asarray(hist["test_acc"]), "o-", ms=3,
            color="tab:orange", label="test")
    best = hist["test_acc"][-1]
    ax.axhline(100 * best, color="tab:orange", ls=":", lw=1)
    ax.set(xlabel="step", ylabel="accuracy (%)", ylim=(80, 100.5),
           title=f"accuracy: {best:.1%} test after {len(loss)} steps ({hist['seconds']:.1f} s)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    if twin:
        ax = axes[2]
        diff = np.abs(np.asarray(twin["normcore"]) - np.asarray(twin["torch"]))
        ax.semilogy(np.arange(1, len(diff) + 1), np.maximum(diff, 1e-18), ".-", ms=3,
                    color="tab:green", label="|loss normcore - loss torch|")
        ax.axhline(1e-9, color="tab:red", ls="--", lw=1, label="1e-9")
        ax.set(xlabel="step", ylabel="absolute difference", ylim=(1e-18, 1e-6),
               title="the torch twin, float64 (exact 0 drawn at 1e-18)")
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("NumPy + normcore: a conv net (GN+WS, BatchNorm, Dropout, SGD) on sklearn digits")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--decay", choices=["coupled", "decoupled"], default="coupled",
                    help="coupled: torch SGD's L2 weight_decay; decoupled: w *= 1 - lr*wd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--plot", metavar="PNG", help="write the loss and accuracy curves here")
    ap.add_argument("--twin", action="store_true",
                    help="also run the torch twin and compare the losses step by step")
    ap.add_argument("--twin-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1,
                    help="Numba threads for normcore's kernels (default 1: the layers here are "
                         "small, and 1 is fastest on a busy 2-core machine)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    dtype = np.dtype(args.dtype)
    hist = train(args.epochs, args.batch_size, args.lr, args.momentum, args.weight_decay,
                 args.decay, args.seed, dtype, progress=not args.no_progress,
                 n_threads=args.threads)
    n = len(hist["step_loss"])
    print(f"{n} steps ({args.epochs} epochs) in {hist['seconds']:.1f} s ({hist['cpu_seconds']:.1f} s "
          f"of CPU, {args.threads} thread(s)): test accuracy "
          f"{hist['test_acc'][-1]:.2%} (best {max(hist['test_acc']):.2%}), final train loss "
          f"{np.mean(hist['step_loss'][-20:]):.4f}, test loss {hist['test_loss'][-1]:.4f}")
    twin = None
    if args.twin and importlib.util.find_spec("torch") is None:
        print("--twin: torch is not installed, the twin is skipped")
    elif args.twin:
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
        from train_digits_torch import twin_losses

        twin = twin_losses(args.twin_steps, epochs=args.epochs, batch_size=args.batch_size,
                           lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                           decay=args.decay, seed=args.seed, dtype=args.dtype,
                           n_threads=args.threads)
        diff = np.abs(np.asarray(twin["normcore"]) - np.asarray(twin["torch"]))
        print(f"torch twin, first {len(diff)} steps: max |loss difference| {diff.max():.3g}")
    if args.plot:
        plot(hist, args.plot, twin)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
