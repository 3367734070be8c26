"""Developer tool (not a test): time the Numba kernels against torch, the NumPy reference and a
copy of the same array, at the kernel level, float32, in one process.

Run with ``python tools/perf_check.py [--threads 2] [--quick]``. Torch is pinned to the
same thread count (``torch.set_num_threads``); numba follows NUMBA_NUM_THREADS (this script
never changes numba's thread settings, pass the variable in the environment).

Layers map to views: LayerNorm (R, K) -> (R, 1, K, 1) with weight (1, K); GroupNorm(32)
(N, C, H, W) -> (N, 32, C//32, H*W) with weight (32, C//32); InstanceNorm2d -> (N, C, 1, H*W);
RMSNorm -> LayerNorm view with center=False; BatchNorm -> (N, C, H*W) with channel_moments +
channel_normalize (training), channel_normalize (eval) and channel_normalize_backward.
The "copy" floor is the faster of np.copyto (one thread) and a numba prange copy into an
existing array; "+alloc" is ``x.copy()`` (a fresh array, page faults included), the floor for
any kernel that returns a new array. "x/copy" is the numba forward time over the copy floor.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def _best(fn, reps, budget=1.5):
    fn()
    times = []
    t_end = time.perf_counter() + budget
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > t_end and len(times) >= 2:
            break
    return min(times)


def _copy_kernel():
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def pcopy(a, b):
        for i in prange(a.shape[0]):
            b[i] = a[i]

    return pcopy


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="skip the NumPy reference")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)

    import numba
    import torch
    import torch.nn.functional as F

    from normcore_numba.backend import NumbaBackend
    from normcore_numpy.backend import NumpyBackend

    nt = args.threads or numba.get_num_threads()
    torch.set_num_threads(nt)
    nb, ref = NumbaBackend(), NumpyBackend()
    pcopy = _copy_kernel()
    rng = np.random.default_rng(0)
    reps = args.reps
    rows = []

    def copy_floor(x):
        out = np.empty_like(x)
        t1 = _best(lambda: np.copyto(out, x), reps)
        a, b = x.reshape(-1), out.reshape(-1)
        t2 = _best(lambda: pcopy(a, b), reps)
        return min(t1, t2)

    def bench(name, x, fwd_nb, bwd_nb, fwd_ref, bwd_ref, fwd_t, bwd_t):
        r = {"name": name}
        r["copy"] = copy_floor(x)
        r["alloc"] = _best(lambda: x.copy(), reps)
        r["nb_f"] = _best(fwd_nb, reps)
        r["nb_b"] = _best(bwd_nb, reps) if bwd_nb else math.nan
        r["t_f"] = _best(fwd_t, reps)
        r["t_b"] = _best(bwd_t, reps) if bwd_t else math.nan
        if args.quick:
            r["np_f"] = r["np_b"] = math.nan
        else:
            r["np_f"] = _best(fwd_ref, 2, 0.1)
            r["np_b"] = _best(bwd_ref, 2, 0.1) if bwd_ref else math.nan
        rows.append(r)
        print(_fmt(r), flush=True)

    def torch_bwd(fn, *inputs):
        ts = [torch.from_numpy(a.copy()).requires_grad_(True) for a in inputs]
        y = fn(*ts)
        g = torch.randn_like(y)

        def run():
            torch.autograd.grad(y, ts, g, retain_graph=True)

        return run

    print(f"threads: numba {nt}, torch {torch.get_num_threads()}; float32; times in ms (best)")
    print(_header())

    # ------------------------------------------------------------------ BatchNorm
    for shape in [(32, 64, 56, 56), (8, 256, 28, 28), (256, 64, 8, 8)]:
        n, c, h, w_ = shape
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        w = rng.random(c, dtype=np.float32) + 0.5
        b = rng.standard_normal(c, dtype=np.float32)
        x3, dy3 = x.reshape(n, c, h * w_), dy.reshape(n, c, h * w_)
        mean, var = nb.channel_moments(x3)
        xt = torch.from_numpy(x)
        wt, bt = torch.from_numpy(w), torch.from_numpy(b)
        rm, rv = torch.zeros(c), torch.ones(c)

        def nb_train(x3=x3, w=w, b=b):
            m, v = nb.channel_moments(x3)
            return nb.channel_normalize(x3, m, v, 1e-5, w, b)

        def ref_train(x3=x3, w=w, b=b):
            m, v = ref.channel_moments(x3)
            return ref.channel_normalize(x3, m, v, 1e-5, w, b)

        bench(
            f"BN2d train {shape}",
            x,
            nb_train,
            lambda dy3=dy3, x3=x3, m=mean, v=var, w=w: nb.channel_normalize_backward(
                dy3, x3, m, v, 1e-5, w, True
            ),
            ref_train,
            lambda dy3=dy3, x3=x3, m=mean, v=var, w=w: ref.channel_normalize_backward(
                dy3, x3, m, v, 1e-5, w, True
            ),
            lambda xt=xt, wt=wt, bt=bt, rm=rm, rv=rv: F.batch_norm(xt, rm, rv, wt, bt, True),
            torch_bwd(lambda a, ww, bb, rm=rm, rv=rv: F.batch_norm(a, rm, rv, ww, bb, True), x, w, b),
        )
        bench(
            f"BN2d eval  {shape}",
            x,
            lambda x3=x3, m=mean, v=var, w=w, b=b: nb.channel_normalize(x3, m, v, 1e-5, w, b),
            None,
            lambda x3=x3, m=mean, v=var, w=w, b=b: ref.channel_normalize(x3, m, v, 1e-5, w, b),
            None,
            lambda xt=xt, wt=wt, bt=bt, rm=rm, rv=rv: F.batch_norm(xt, rm, rv, wt, bt, False),
            None,
        )
    # channels-last BatchNorm (NHWC storage of an NCHW array)
    shape = (32, 64, 56, 56)
    n, c, h, w_ = shape
    xcl = np.ascontiguousarray(rng.standard_normal((n, h, w_, c), dtype=np.float32))
    x = xcl.transpose(0, 3, 1, 2)
    dy = np.ascontiguousarray(rng.standard_normal((n, h, w_, c), dtype=np.float32)).transpose(0, 3, 1, 2)
    x3, dy3 = x.reshape(n, c, h * w_), dy.reshape(n, c, h * w_)
    w = rng.random(c, dtype=np.float32) + 0.5
    b = rng.standard_normal(c, dtype=np.float32)
    mean, var = nb.channel_moments(x3)
    xt = torch.from_numpy(xcl).permute(0, 3, 1, 2)
    wt, bt = torch.from_numpy(w), torch.from_numpy(b)
    rm, rv = torch.zeros(c), torch.ones(c)
    bench(
        f"BN2d train NHWC {shape}",
        xcl,
        lambda: nb.channel_normalize(x3, *nb.channel_moments(x3), 1e-5, w, b),
        lambda: nb.channel_normalize_backward(dy3, x3, mean, var, 1e-5, w, True),
        lambda: ref.channel_normalize(x3, *ref.channel_moments(x3), 1e-5, w, b),
        lambda: ref.channel_normalize_backward(dy3, x3, mean, var, 1e-5, w, True),
        lambda: F.batch_norm(xt, rm, rv, wt, bt, True),
        None,
    )

    # ------------------------------------------------------------------ group view
    def group_case(name, x, x4, g, d, center, tf, tb_fn, weight=True):
        w = (rng.random((g, d), dtype=np.float32) + 0.5) if weight else None
        b = rng.standard_normal((g, d), dtype=np.float32) if (weight and center) else None
        dy4 = rng.standard_normal(x4.shape, dtype=np.float32)
        _, m, v = nb.group_normalize(x4, w, b, 1e-5, center)
        bench(
            name,
            x,
            lambda: nb.group_normalize(x4, w, b, 1e-5, center),
            lambda: nb.group_normalize_backward(dy4, x4, m, v, 1e-5, w, center),
            lambda: ref.group_normalize(x4, w, b, 1e-5, center),
            lambda: ref.group_normalize_backward(dy4, x4, m, v, 1e-5, w, center),
            tf,
            tb_fn,
        )

    for r_, k_ in [(8192, 1024), (12544, 768), (4096, 4096)]:
        x = rng.standard_normal((r_, k_), dtype=np.float32)
        xt = torch.from_numpy(x)
        wt, bt = torch.rand(k_) + 0.5, torch.randn(k_)
        group_case(
            f"LayerNorm ({r_},{k_})",
            x,
            x.reshape(r_, 1, k_, 1),
            1,
            k_,
            True,
            lambda xt=xt, wt=wt, bt=bt, k_=k_: F.layer_norm(xt, (k_,), wt, bt),
            torch_bwd(lambda a, ww, bb, k_=k_: F.layer_norm(a, (k_,), ww, bb), x, wt.numpy(), bt.numpy()),
        )
    for r_, k_ in [(8192, 1024), (4096, 4096)]:
        x = rng.standard_normal((r_, k_), dtype=np.float32)
        xt = torch.from_numpy(x)
        wt = torch.rand(k_) + 0.5
        group_case(
            f"RMSNorm ({r_},{k_})",
            x,
            x.reshape(r_, 1, k_, 1),
            1,
            k_,
            False,
            lambda xt=xt, wt=wt, k_=k_: F.rms_norm(xt, (k_,), wt),
            torch_bwd(lambda a, ww, k_=k_: F.rms_norm(a, (k_,), ww), x, wt.numpy()),
        )
    shape = (16, 256, 32, 32)
    x = rng.standard_normal(shape, dtype=np.float32)
    xt = torch.from_numpy(x)
    wt, bt = torch.rand(256) + 0.5, torch.randn(256)
    n, c, h, w_ = shape
    group_case(
        f"GroupNorm32 {shape}",
        x,
        x.reshape(n, 32, c // 32, h * w_),
        32,
        c // 32,
        True,
        lambda: F.group_norm(xt, 32, wt, bt),
        torch_bwd(lambda a, ww, bb: F.group_norm(a, 32, ww, bb), x, wt.numpy(), bt.numpy()),
    )
    shape = (16, 64, 56, 56)
    x = rng.standard_normal(shape, dtype=np.float32)
    xt = torch.from_numpy(x)
    n, c, h, w_ = shape
    group_case(
        f"InstanceNorm2d {shape}",
        x,
        x.reshape(n, c, 1, h * w_),
        c,
        1,
        True,
        lambda: F.instance_norm(xt),
        torch_bwd(lambda a: F.instance_norm(a), x),
        weight=False,
    )

    # ------------------------------------------------------------------ summary
    def geo(vals):
        vals = [v for v in vals if v == v and v > 0]
        return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else math.nan

    sp_f = [r["t_f"] / r["nb_f"] for r in rows]
    sp_b = [r["t_b"] / r["nb_b"] for r in rows]
    np_sp = [r["np_f"] / r["nb_f"] for r in rows] + [r["np_b"] / r["nb_b"] for r in rows]
    print()
    print(
        f"geomean speedup vs torch: forward {geo(sp_f):.2f}x, backward {geo(sp_b):.2f}x, "
        f"all {geo(sp_f + sp_b):.2f}x; vs NumPy reference {geo(np_sp):.1f}x"
    )
    return rows


def _header():
    return (
        f"{'case':38s} {'copy':>7s} {'+alloc':>7s} {'nb fwd':>7s} {'x/copy':>6s} {'torch':>7s} {'np':>8s}"
        f" | {'nb bwd':>7s} {'torch':>7s} {'np':>8s} | {'spd f':>5s} {'spd b':>5s}"
    )


def _fmt(r):
    ms = 1e3
    return (
        f"{r['name']:38s} {r['copy'] * ms:7.2f} {r['alloc'] * ms:7.2f} {r['nb_f'] * ms:7.2f}"
        f" {r['nb_f'] / r['copy']:6.2f} {r['t_f'] * ms:7.2f} {r['np_f'] * ms:8.1f}"
        f" | {r['nb_b'] * ms:7.2f} {r['t_b'] * ms:7.2f} {r['np_b'] * ms:8.1f}"
        f" | {r['t_f'] / r['nb_f']:5.2f} {r['t_b'] / r['nb_b']:5.2f}"
    )


if __name__ == "__main__":
    main()
