"""The peers of ``normcore bench --peers``: ONNX Runtime and JAX, what a user would pick instead.

Each peer runs in its own process (``python -m normcore.bench_peers PEER``, the cases as JSON on
stdin, one JSON line per case on stdout), so its thread pool does not compete with Numba's and
torch's for the cores; the parent waits while it runs. Inputs are standard-normal data of the
case's shape and dtype; constructor arguments come from the layer table (:mod:`normcore.layers`).

* **onnxruntime**: a one-node inference graph per op (BatchNormalization with running statistics,
  LayerNormalization, GroupNormalization (opset 21), InstanceNormalization, RMSNormalization
  (opset 23)), ``intra_op_num_threads`` = normcore's threads, one inter-op thread, spinning off.
  Forward only: ONNX Runtime has no training kernels for these ops, so BatchNorm has only its
  evaluation case, and the channels-last case is left out (ONNX tensors are NCHW).
* **jax**: ``jax.jit`` of the forward written in ``jax.numpy`` (BatchNorm's training forward
  returns the updated running statistics too), and of applying the ``jax.vjp`` function to dy
  (the backward of a training step: the forward's residuals are kept); every call waits with
  ``block_until_ready``. The process is pinned to as many cores as normcore's threads.

Each case also reports ``max_abs_err``: the peer's forward output against normcore's NumPy
reference, so a column that computes something else shows up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["PEERS", "NOTES", "TOLERANCE", "unavailable", "measure", "main"]

PEERS = ("onnxruntime", "jax")
NOTES = {
    "onnxruntime": "onnxruntime: forward only, one-node inference graphs (no training kernels: "
                   "BatchNorm only in eval, no NHWC case), spinning off, its own process",
    "jax": "jax: jit forward and jit vjp-function backward, block_until_ready, its own process",
}
#: Largest forward difference from the NumPy reference a peer may have before the report notes it
#: (inputs are standard normal, outputs of order 1).
TOLERANCE = {"float16": 5e-2, "float32": 2e-3, "float64": 1e-8}
_NEEDS = {"onnxruntime": ("onnx", "onnxruntime"), "jax": ("jax",)}


def unavailable(peer: str) -> str | None:
    """Why ``peer`` cannot be measured here, or None when it can."""
    if peer not in _NEEDS:
        return f"unknown peer {peer!r}; choose from {', '.join(PEERS)}"
    missing = [m for m in _NEEDS[peer] if importlib.util.find_spec(m) is None]
    return f"not installed ({', '.join(missing)}; pip install {' '.join(missing)})" if missing \
        else None


def measure(peer: str, cases: Sequence[Any], threads: int, repeat: int,
            progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Per case, the peer process's message: ``timings`` (pass -> per-round seconds; empty where
    the peer has no counterpart) and ``max_abs_err``, or ``error``. Runs the peer's own process;
    ``progress`` is called once per case."""
    spec = {"threads": threads, "repeat": repeat,
            "cases": [{"layer": c.layer, "shape": list(c.shape), "dtype": c.dtype}
                      for c in cases]}
    results: list[dict[str, Any]] = [{"error": "peer process gave no result"}] * len(cases)
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                                            "cpu"))
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "normcore.bench_peers", peer],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        for line in proc.stdout:
            msg = json.loads(line)
            i = msg["index"]
            results[i] = msg
            if progress is not None:
                progress(f"{cases[i].label} on {peer}")
        code = proc.wait()
        if code != 0:
            err.seek(0)
            tail = err.read().strip().splitlines()[-1:] or [""]
            results = [{"error": f"{peer} process exited {code}: {tail[0]}"} if "error" in r
                       else r for r in results]
    return results


# ---------------------------------------------------------------------- the child process
def main(argv: Sequence[str] | None = None) -> int:
    """The peer process: read the spec from stdin, print one JSON line per case."""
    args = list(sys.argv[1:] if argv is None else argv)
    peer = args[0]
    spec = json.load(sys.stdin)
    threads = int(spec["threads"])
    _pin(threads)
    build = {"onnxruntime": _ort_timers, "jax": _jax_timers}[peer]
    from normcore import bench
    from normcore._bench_timing import run_rounds

    rng = np.random.default_rng(0)
    for i, c in enumerate(spec["cases"]):
        case = bench.BenchCase(c["layer"], tuple(c["shape"]), c["dtype"])
        msg: dict[str, Any] = {"index": i}
        try:
            x = rng.standard_normal(case.shape).astype(case.dtype)
            dy = rng.standard_normal(case.shape).astype(case.dtype)
            timers, y = build(case, x, dy, threads)
            if timers:
                errors: dict[str, str] = {}
                group = {peer: timers}
                run_rounds(group, [], int(spec["repeat"]), errors)
                if errors:
                    raise RuntimeError(errors[peer])
                msg["max_abs_err"] = _error(case, x, y)
            msg["timings"] = {name: t.rounds for name, t in timers.items()}
        except Exception as exc:  # one failing case must not end the peer's column
            msg = {"index": i, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(msg), flush=True)
    return 0


def _pin(threads: int) -> None:
    """Keep this process on ``threads`` cores (JAX's thread pool has no size setting)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        cpus = sorted(affinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, cpus[:threads])


def _params(case: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray, float]:
    """The table's kwargs, weight and bias of the layer's own parameter shape, and eps."""
    kw = case.row.kwargs(case.shape)
    name = case.row.name
    if "normalized_shape" in kw:
        pshape = tuple(np.atleast_1d(kw["normalized_shape"]))
    else:
        pshape = (case.shape[1],)
    eps = kw.get("eps", 1e-5)
    if name == "RMSNorm" and kw.get("eps") is None:
        eps = float(np.finfo(case.dtype).eps)  # torch's default
    rng = np.random.default_rng(1)
    w = (rng.uniform(0.5, 1.5, pshape)).astype(case.dtype)
    b = rng.standard_normal(pshape).astype(case.dtype)
    return kw, w, b, eps


def _reference(case: Any, x: np.ndarray) -> np.ndarray:
    """normcore's NumPy reference forward of the case with the peers' parameters."""
    import normcore

    kw, w, b, _ = _params(case)
    layer = getattr(normcore, case.row.name)(**kw, backend="numpy", dtype=case.dtype)
    state = {"weight": w, "bias": b}
    if case.variant == "eval":
        state.update(running_mean=np.zeros_like(w), running_var=np.ones_like(w))
    layer.load_state_dict({k: v for k, v in state.items() if k in layer.state_dict()},
                          strict=False)
    if case.variant == "eval":
        layer.eval()
    return np.asarray(layer(x))


def _error(case: Any, x: np.ndarray, y: Any) -> float:
    y = np.asarray(y, dtype=np.float64)
    if case.variant == "nhwc":  # JAX computed on the NHWC array
        y = np.moveaxis(y, -1, 1)
    return float(np.max(np.abs(y - _reference(case, x).astype(np.float64))))


# ---------------------------------------------------------------------- onnxruntime
def _ort_timers(case: Any, x: np.ndarray, dy: np.ndarray, threads: int) -> tuple[dict, Any]:
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from ._bench_timing import Timer

    name, variant = case.row.name, case.variant
    if variant == "nhwc" or not name.endswith(("Norm1d", "Norm2d", "Norm3d", "LayerNorm",
                                                 "GroupNorm", "RMSNorm")):
        return {}, None
    if name.startswith("BatchNorm") and variant != "eval":
        return {}, None  # training-mode BatchNormalization: no kernel in ONNX Runtime
    kw, w, b, eps = _params(case)
    inputs: list[tuple[str, np.ndarray]] = [("scale", w)]
    attrs: dict[str, Any] = {"epsilon": eps}
    if name.startswith("BatchNorm"):
        op, opset = "BatchNormalization", 15
        inputs += [("bias", b), ("mean", np.zeros_like(w)), ("var", np.ones_like(w))]
    elif name.startswith("InstanceNorm"):  # affine=False in torch: scale 1, bias 0
        op, opset = "InstanceNormalization", 17
        inputs = [("scale", np.ones_like(w)), ("bias", np.zeros_like(b))]
    elif name == "LayerNorm":
        op, opset = "LayerNormalization", 17
        inputs.append(("bias", b))
        attrs["axis"] = -w.ndim
    elif name == "GroupNorm":
        op, opset = "GroupNormalization", 21
        inputs.append(("bias", b))
        attrs["num_groups"] = kw["num_groups"]
    else:
        op, opset = "RMSNormalization", 23
        attrs["axis"] = -w.ndim
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(case.dtype))
    if op in ("LayerNormalization", "GroupNormalization", "RMSNormalization") and \
            case.dtype == "float64":
        attrs["stash_type"] = elem  # statistics in float64 (the default stashes float32)
    node = helper.make_node(op, ["x"] + [n for n, _ in inputs], ["y"], **attrs)
    graph = helper.make_graph(
        [node], name, [helper.make_tensor_value_info("x", elem, list(x.shape))],
        [helper.make_tensor_value_info("y", elem, list(x.shape))],
        [numpy_helper.from_array(a, name=n) for n, a in inputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {"x": np.ascontiguousarray(x)}
    y = sess.run(None, feed)[0]
    sess.run(None, feed)
    return {"forward": Timer(lambda: sess.run(None, feed))}, y


# ---------------------------------------------------------------------- jax
def _jax_forward(case: Any, eps: float, kw: dict[str, Any]) -> tuple[Callable, bool]:
    """The forward as a function of (x, weight, bias) and whether it returns auxiliary outputs
    (BatchNorm's running statistics, for ``jax.vjp(..., has_aux=True)``)."""
    import jax.numpy as jnp

    name, variant, nd = case.row.name, case.variant, len(case.shape)
    low = np.dtype(case.dtype).itemsize < 4

    def up(x: Any) -> Any:  # float16 statistics in float32, as torch
        return x.astype(jnp.float32) if low else x

    if name.startswith("BatchNorm"):
        axes = tuple(range(nd - 1)) if variant == "nhwc" else (0,) + tuple(range(2, nd))
        bshape = (1,) * (nd - 1) + (-1,) if variant == "nhwc" else (1, -1) + (1,) * (nd - 2)
        if variant == "eval":
            def f(x: Any, w: Any, b: Any, rm: Any, rv: Any) -> Any:
                scale = (w / jnp.sqrt(rv + eps)).reshape(bshape)
                return (x - rm.reshape(bshape)) * scale + b.reshape(bshape)
            return f, False

        def g(x: Any, w: Any, b: Any, rm: Any, rv: Any) -> Any:
            xf = up(x)
            mean, var = xf.mean(axes), xf.var(axes)
            n = x.size // x.shape[-1 if variant == "nhwc" else 1]  # values per channel
            y = (xf - mean.reshape(bshape)) / jnp.sqrt(var.reshape(bshape) + eps)
            y = (y * w.reshape(bshape) + b.reshape(bshape)).astype(x.dtype)
            return y, (0.9 * rm + 0.1 * mean, 0.9 * rv + 0.1 * var * n / (n - 1))
        return g, True
    if name.startswith("InstanceNorm"):
        axes = tuple(range(2, nd))

        def h(x: Any) -> Any:
            xf = up(x)
            mean, var = xf.mean(axes, keepdims=True), xf.var(axes, keepdims=True)
            return ((xf - mean) / jnp.sqrt(var + eps)).astype(x.dtype)
        return h, False
    if name == "GroupNorm":
        groups = kw["num_groups"]

        def gn(x: Any, w: Any, b: Any) -> Any:
            xg = up(x).reshape(x.shape[0], groups, -1)
            mean, var = xg.mean(-1, keepdims=True), xg.var(-1, keepdims=True)
            y = ((xg - mean) / jnp.sqrt(var + eps)).reshape(x.shape)
            bshape = (1, -1) + (1,) * (nd - 2)
            return (y * w.reshape(bshape) + b.reshape(bshape)).astype(x.dtype)
        return gn, False
    k = len(np.atleast_1d(kw["normalized_shape"]))
    axes = tuple(range(nd - k, nd))
    if name == "LayerNorm":
        def ln(x: Any, w: Any, b: Any) -> Any:
            xf = up(x)
            mean, var = xf.mean(axes, keepdims=True), xf.var(axes, keepdims=True)
            return ((xf - mean) / jnp.sqrt(var + eps) * w + b).astype(x.dtype)
        return ln, False
    if name == "RMSNorm":
        def rms(x: Any, w: Any) -> Any:
            xf = up(x)
            return (xf / jnp.sqrt(jnp.mean(xf * xf, axes, keepdims=True) + eps) * w).astype(x.dtype)
        return rms, False
    raise NotImplementedError(f"no JAX forward for {name}")


def _jax_timers(case: Any, x: np.ndarray, dy: np.ndarray, threads: int) -> tuple[dict, Any]:
    import jax
    import jax.numpy as jnp

    from ._bench_timing import Timer

    name, variant = case.row.name, case.variant
    if not name.endswith(("Norm1d", "Norm2d", "Norm3d", "LayerNorm", "GroupNorm", "RMSNorm")):
        return {}, None
    kw, w, b, eps = _params(case)
    f, aux = _jax_forward(case, eps, kw)
    if variant == "nhwc":  # JAX arrays are dense: the channels-last array itself
        x, dy = np.moveaxis(x, 1, -1).copy(), np.moveaxis(dy, 1, -1).copy()
    if name.startswith("BatchNorm"):
        args = [x, w, b, np.zeros_like(w), np.ones_like(w)]
    elif name.startswith("InstanceNorm"):
        args = [x]
    elif name == "RMSNorm":
        args = [x, w]
    else:
        args = [x, w, b]
    jargs = [jnp.asarray(a) for a in args]
    jdy = jnp.asarray(dy)
    fwd = jax.jit(f)

    def forward() -> Any:
        return jax.block_until_ready(fwd(*jargs))

    for _ in range(2):
        out = forward()
    y = out[0] if aux else out
    timers = {"forward": Timer(forward)}
    if variant != "eval":
        # the backward of a training step: residuals from the forward, gradients of x and the
        # parameters (not of the running statistics)
        n_diff = 3 if name.startswith("BatchNorm") else len(jargs)
        diff, rest = jargs[:n_diff], jargs[n_diff:]
        vjp = jax.vjp(lambda *a: fwd(*a, *rest), *diff, has_aux=aux)
        vjp_fn = vjp[1]
        apply = jax.jit(lambda fn, g: fn(g))

        def backward() -> Any:
            return jax.block_until_ready(apply(vjp_fn, jdy))

        for _ in range(2):
            backward()
        timers["backward"] = Timer(backward)
    return timers, np.asarray(y)


if __name__ == "__main__":
    sys.exit(main())
