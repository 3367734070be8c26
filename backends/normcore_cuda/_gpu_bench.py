"""Benchmark of the numba-cuda backend on a REAL GPU (needs CuPy and a CUDA build of torch).

Run::

    python -m normcore_cuda._gpu_bench [--repeat 20] [--dtypes float32,float16]

Times LayerNorm and RMSNorm forward/backward at (4096, 4096), (8192, 1024) and (16384, 8192), and
BatchNorm2d (32, 64, 56, 56) training forward/backward, in float32 and float16. For each it
prints the median time, the achieved bandwidth (forward counts 2x the bytes of x, backward 3x) as
a fraction of a measured device-to-device copy (CuPy), and the ratio to torch's CUDA layers
(> 1 means normcore is slower). Not runnable under the simulator.
"""

from __future__ import annotations

import argparse
import statistics
import sys


def _timer(cp, fn, repeat: int, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) * 1e-3)
    return statistics.median(times)


def copy_bandwidth(cp, repeat: int, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    src = cp.empty(nbytes // 4, dtype=cp.float32)
    src.fill(1.0)
    dst = cp.empty_like(src)

    def run():
        cp.copyto(dst, src)  # a device-to-device copy kernel

    t = _timer(cp, run, repeat)
    return 2 * nbytes / t


EPS = 1e-5


def bench_rownorm(cp, torch, be, report, repeat, gen, tdt, rows, k, center):
    """LayerNorm (``center``) or RMSNorm over the last axis of a (rows, k) tensor."""
    dev = torch.device("cuda")
    xt = torch.randn(rows, k, device=dev, dtype=tdt, generator=gen)
    dyt = torch.randn(rows, k, device=dev, dtype=tdt, generator=gen)
    wt = torch.randn(k, device=dev, dtype=tdt, generator=gen)
    bt = torch.randn(k, device=dev, dtype=tdt, generator=gen)
    x4 = be.asarray(xt).reshape(rows, 1, k, 1)  # zero-copy via __cuda_array_interface__
    dy4 = be.asarray(dyt).reshape(rows, 1, k, 1)
    w2 = be.asarray(wt).reshape(1, k)
    b2 = be.asarray(bt).reshape(1, k) if center else None
    nbytes = xt.numel() * xt.element_size()
    _, mean, var = be.group_normalize(x4, w2, b2, EPS, center)

    def fwd():
        return be.group_normalize(x4, w2, b2, EPS, center)

    def bwd():
        return be.group_normalize_backward(dy4, x4, mean, var, EPS, w2, center)

    xr = xt.detach().requires_grad_(True)
    wr = wt.detach().requires_grad_(True)
    br = bt.detach().requires_grad_(True)
    params = (xr, wr, br) if center else (xr, wr)

    def t_fwd():
        if center:
            return torch.nn.functional.layer_norm(xr, (k,), wr, br, EPS)
        if hasattr(torch.nn.functional, "rms_norm"):  # torch >= 2.4
            return torch.nn.functional.rms_norm(xr, (k,), wr, EPS)
        xf = xr.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(xr.dtype) * wr

    with torch.no_grad():
        t_torch_f = _timer(cp, t_fwd, repeat)
    yt = t_fwd()

    def t_bwd():
        return torch.autograd.grad(yt, params, dyt, retain_graph=True)

    t_torch_b = _timer(cp, t_bwd, repeat)
    dname = str(tdt).replace("torch.", "")
    case = f"{'LayerNorm' if center else 'RMSNorm'} {rows}x{k} {dname}"
    report(case + " fwd", _timer(cp, fwd, repeat), 2 * nbytes, t_torch_f)
    report(case + " bwd", _timer(cp, bwd, repeat), 3 * nbytes, t_torch_b)


def bench_batchnorm(cp, torch, be, report, repeat, gen, tdt, shape):
    """BatchNorm2d in training mode: batch statistics, normalize, running update; backward."""
    dev = torch.device("cuda")
    n, c, h, w = shape
    xt = torch.randn(n, c, h, w, device=dev, dtype=tdt, generator=gen)
    dyt = torch.randn(n, c, h, w, device=dev, dtype=tdt, generator=gen)
    wt = torch.randn(c, device=dev, dtype=torch.float32, generator=gen)
    bt = torch.randn(c, device=dev, dtype=torch.float32, generator=gen)
    x3 = be.asarray(xt).reshape(n, c, h * w)
    dy3 = be.asarray(dyt).reshape(n, c, h * w)
    wc, bc = be.asarray(wt), be.asarray(bt)
    rm = cp.zeros(c, cp.float32)
    rv = cp.ones(c, cp.float32)
    nbytes = xt.numel() * xt.element_size()
    m = n * h * w

    def fwd():
        mean, var = be.channel_moments(x3)
        y = be.channel_normalize(x3, mean, var, EPS, wc, bc)
        be.running_update(rm, rv, mean.reshape(1, c), var.reshape(1, c), 0.1, m / (m - 1))
        return y

    mean, var = be.channel_moments(x3)

    def bwd():
        return be.channel_normalize_backward(dy3, x3, mean, var, EPS, wc, True)

    trm = torch.zeros(c, device=dev)
    trv = torch.ones(c, device=dev)
    xr = xt.detach().requires_grad_(True)
    wr = wt.detach().requires_grad_(True)
    br = bt.detach().requires_grad_(True)

    def t_fwd():
        return torch.nn.functional.batch_norm(xr, trm, trv, wr, br, True, 0.1, EPS)

    with torch.no_grad():
        t_torch_f = _timer(cp, t_fwd, repeat)
    yt = t_fwd()

    def t_bwd():
        return torch.autograd.grad(yt, (xr, wr, br), dyt, retain_graph=True)

    t_torch_b = _timer(cp, t_bwd, repeat)
    dname = str(tdt).replace("torch.", "")
    case = f"BatchNorm2d {n}x{c}x{h}x{w} {dname}"
    report(case + " fwd", _timer(cp, fwd, repeat), 2 * nbytes, t_torch_f)
    report(case + " bwd", _timer(cp, bwd, repeat), 3 * nbytes, t_torch_b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--dtypes", default="float32,float16")
    args = ap.parse_args(argv)

    try:
        import cupy as cp
        import torch
    except ImportError as exc:
        print(f"needs cupy and torch: {exc}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2

    from normcore_cuda.backend import CudaBackend

    be = CudaBackend()
    av = be.is_available()
    if not av:
        print(f"numba-cuda backend unavailable: {av.reason}", file=sys.stderr)
        return 2
    if getattr(be._k, "SIMULATOR", False):
        print("refusing to benchmark the CUDA simulator", file=sys.stderr)
        return 2

    dev = torch.device("cuda")
    bw = copy_bandwidth(cp, args.repeat)
    print(f"device: {torch.cuda.get_device_name()}  copy bandwidth: {bw / 1e9:.1f} GB/s")
    header = f"{'case':44s} {'ms':>8s} {'GB/s':>8s} {'%copy':>6s} {'torch ms':>9s} {'ratio':>6s}"
    print(header)
    print("-" * len(header))
    rows = []

    def report(case: str, t: float, nbytes: int, t_torch: float) -> None:
        gbs = nbytes / t
        rows.append((case, t, gbs / bw, t / t_torch))
        print(f"{case:44s} {t * 1e3:8.3f} {gbs / 1e9:8.1f} {100 * gbs / bw:6.1f} "
              f"{t_torch * 1e3:9.3f} {t / t_torch:6.2f}")

    for dname in args.dtypes.split(","):
        tdt = getattr(torch, dname)
        gen = torch.Generator(device=dev).manual_seed(0)
        for rows_, k in [(4096, 4096), (8192, 1024), (16384, 8192)]:
            for center in (True, False):
                bench_rownorm(cp, torch, be, report, args.repeat, gen, tdt, rows_, k, center)
            torch.cuda.empty_cache()
        bench_batchnorm(cp, torch, be, report, args.repeat, gen, tdt, (32, 64, 56, 56))
        torch.cuda.empty_cache()

    print("-" * len(header))
    frac = statistics.geometric_mean([r[2] for r in rows])
    ratio = statistics.geometric_mean([r[3] for r in rows])
    print(f"geometric mean: {100 * frac:.1f} % of copy bandwidth, {ratio:.2f}x torch time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
