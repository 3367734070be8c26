"""Conformance cases. Each case is a function of a backend that raises AssertionError on a mismatch.

Two families:

* golden: torch's recorded behaviour (``golden/golden.npz``, made by ``golden/make_golden.py``),
  replayed through the normcore modules on the backend under test;
* reference: each kernel of the contract against the NumPy reference backend on inputs chosen to
  break kernels: 1-element and prime dimensions, sliced/transposed/channels-last strides, float16,
  large offsets, constant rows, every dropout edge.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import normcore
from normcore import functional as F
from normcore import registry
from normcore.backend import KERNELS, OPTIONAL_KERNELS, Backend, dropout_keep_mask

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden" / "golden.npz"
REFERENCE = "numpy"

#: (rtol, atol) per dtype: |actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-9),
    "float32": (2e-4, 2e-5),
    "float16": (1e-2, 4e-3),
}


@dataclass(frozen=True)
class Case:
    """One conformance check. ``big`` cases use larger arrays (skipped with ``quick``)."""

    id: str
    run: Callable[[Backend], None]
    kernels: tuple[str, ...] = ()
    big: bool = False
    #: The dtype of the arrays it feeds the backend; a backend whose ``dtypes`` lack it skips it.
    dtype: str = "float32"


@dataclass(frozen=True)
class CaseResult:
    id: str
    ok: bool
    message: str = ""
    seconds: float = 0.0
    skipped: bool = False


def assert_close(actual: Any, expected: Any, dtype: Any, what: str) -> None:
    """Compare with the per-dtype tolerance of :data:`TOLERANCES`; the message says where and how much."""
    a = np.asarray(normcore.to_numpy(actual), dtype=np.float64)
    e = np.asarray(normcore.to_numpy(expected), dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape}, expected {e.shape}")
    if not np.isfinite(a).all() and np.isfinite(e).all():
        raise AssertionError(f"{what}: {int((~np.isfinite(a)).sum())} non-finite values")
    rtol, atol = TOLERANCES[np.dtype(dtype).name]
    scale = max(1.0, float(np.abs(e).max(initial=0.0)))
    bad = np.abs(a - e) > atol * scale + rtol * np.abs(e)
    if bad.any():
        i = np.unravel_index(np.argmax(np.abs(a - e)), a.shape)
        raise AssertionError(f"{what}: {int(bad.sum())}/{a.size} elements differ beyond "
                             f"rtol={rtol}, atol={atol}; worst at {tuple(map(int, i))}: "
                             f"{a[i]!r} vs expected {e[i]!r}")


# ---------------------------------------------------------------------- golden replay (torch)
@functools.lru_cache(maxsize=1)
def _golden() -> tuple[list[dict], Any]:
    data = np.load(GOLDEN)
    return json.loads(str(data["cases"])), data


def _replay(index: int, backend: Backend) -> None:
    cases, data = _golden()
    case = cases[index]
    dtype = np.dtype(case["dtype"])

    def g(key: str) -> np.ndarray:
        return data[f"{index}/{key}"]

    if case["layer"] == "WeightStandardization":
        y, saved = F.weight_standardization(g("step0.x"), **case["kwargs"], backend=backend)
        assert_close(y, g("step0.y"), dtype, "weight_standardization forward")
        dx = F.weight_standardization_backward(g("step0.dy"), saved)
        assert_close(dx, g("step0.dx"), dtype, "weight_standardization backward")
        return
    layer = getattr(normcore, case["layer"])(**case["kwargs"], backend=backend, dtype=dtype)
    init = {k[5:]: g(k) for k in (key.split("/", 1)[1] for key in data.files
                                    if key.startswith(f"{index}/init."))}
    layer.load_state_dict(init)
    for step in range(case["steps"] + 1):
        where = f"step {step} ({'eval' if step == case['steps'] else 'train'})"
        if step == case["steps"]:
            layer.eval()
        y = layer(backend.asarray(g(f"step{step}.x")))
        assert_close(y, g(f"step{step}.y"), dtype, f"{where} output")
        dx = layer.backward(backend.asarray(g(f"step{step}.dy")))
        assert_close(dx, g(f"step{step}.dx"), dtype, f"{where} grad_input")
        state = layer.state_dict()
        for key in (k.split("/", 1)[1] for k in data.files if k.startswith(f"{index}/step{step}.")):
            name = key.split(".", 1)[1]
            if name in ("x", "dy", "y", "dx"):
                continue
            if name.startswith("grad."):
                param = getattr(layer, name[5:])
                assert_close(param.grad, g(key), dtype, f"{where} {name} (accumulated)")
            elif name == "num_batches_tracked":
                if int(state[name]) != int(g(key)):
                    raise AssertionError(f"{where} num_batches_tracked {int(state[name])}, "
                                         f"expected {int(g(key))}")
            else:
                if name not in state:
                    raise AssertionError(f"{where}: state_dict lacks {name!r}")
                assert_close(state[name], g(key), dtype, f"{where} {name}")
        expected_keys = {k.split(".", 1)[1] for k in (key.split("/", 1)[1] for key in data.files
                         if key.startswith(f"{index}/step{step}.")) if not k.startswith(
                         f"step{step}.grad.")} - {"x", "dy", "y", "dx"}
        if set(state) != expected_keys:
            raise AssertionError(f"{where}: state_dict keys {sorted(state)}, torch has "
                                 f"{sorted(expected_keys)}")


def _golden_cases() -> list[Case]:
    if not GOLDEN.exists():
        return []
    cases, _ = _golden()
    out = []
    for i, c in enumerate(cases):
        kernels = ("group_normalize", "group_normalize_backward")
        if c["layer"].startswith("BatchNorm") or c["layer"].startswith("InstanceNorm"):
            kernels += ("channel_moments", "channel_normalize", "channel_normalize_backward",
                        "running_update")
        if c["layer"] == "WeightStandardization":
            kernels = ("standardize_rows", "standardize_rows_backward")
        out.append(Case(f"golden:{c['id']}", functools.partial(_replay, i), kernels,
                        dtype=c["dtype"]))
    return out


# ---------------------------------------------------------------------- reference comparisons
def _rng(*key: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))  # stable across processes


def _layout(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``a`` in another memory layout."""
    if layout == "contiguous":
        return a
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "channels_last":  # (N, C, L) whose C is innermost in memory
        return np.ascontiguousarray(np.moveaxis(a, 1, -1)).swapaxes(1, -1) if a.ndim == 3 \
            else np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)
    if layout == "sliced":  # every other element of a larger array
        big = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "outer_sliced":  # every other n and c, reversed n; the last axis contiguous
        big = np.zeros((2 * a.shape[0], 2 * a.shape[1], *a.shape[2:]), dtype=a.dtype)
        view = big[::-2, ::2]
        view[...] = a
        return view
    raise ValueError(layout)


def _data(shape: tuple[int, ...], dtype: Any, *key: Any, offset: float = 0.5) -> np.ndarray:
    rng = _rng(shape, np.dtype(dtype).name, *key)
    return (rng.normal(offset, 1.5, size=shape)).astype(dtype)


def _k(backend: Backend, name: str) -> Callable[..., Any]:
    """The backend's kernel, or the reference's when the user opted into fallback."""
    return registry.kernel(backend, name)


def _to(backend: Backend, a: np.ndarray | None) -> Any:
    return None if a is None else backend.asarray(a)


def _check_outputs(got: Any, want: Any, dtype: Any, names: tuple[str, ...]) -> None:
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for name, a, e in zip(names, got, want, strict=False):
        if e is None:
            continue
        if np.dtype(normcore.to_numpy(a).dtype) != np.dtype(normcore.to_numpy(e).dtype):
            raise AssertionError(f"{name}: dtype {normcore.to_numpy(a).dtype}, expected "
                                 f"{normcore.to_numpy(e).dtype}")
        assert_close(a, e, dtype, name)


def _channel_case(shape, dtype, layout, affine, backend: Backend) -> None:
    ref = normcore.get_backend(REFERENCE)
    x = _layout(_data(shape, dtype, "x"), layout)
    dy = _layout(_data(shape, dtype, "dy", offset=0.0), layout)
    c = shape[1]
    w = _data((c,), dtype, "w", offset=1.0) if affine else None
    b = _data((c,), dtype, "b") if affine else None
    want_m, want_v = ref.channel_moments(x)
    _check_outputs(_k(backend, "channel_moments")(_to(backend, x)), (want_m, want_v), dtype,
                   ("channel_moments mean", "channel_moments var"))
    y = _k(backend, "channel_normalize")(_to(backend, x), _to(backend, want_m), _to(backend, want_v),
                                  1e-5, _to(backend, w), _to(backend, b))
    _check_outputs(y, ref.channel_normalize(x, want_m, want_v, 1e-5, w, b), dtype,
                   ("channel_normalize y",))
    for batch_stats in (True, False):
        got = _k(backend, "channel_normalize_backward")(_to(backend, dy), _to(backend, x),
                                                 _to(backend, want_m), _to(backend, want_v),
                                                 1e-5, _to(backend, w), batch_stats)
        want = ref.channel_normalize_backward(dy, x, want_m, want_v, 1e-5, w, batch_stats)
        _check_outputs(got, want, dtype, (f"dx (batch_stats={batch_stats})", "dweight", "dbias"))


def _moments_normalize_case(shape, dtype, layout, affine, backend: Backend) -> None:
    """The optional fused kernel against the reference's channel_moments + channel_normalize."""
    ref = normcore.get_backend(REFERENCE)
    x = _layout(_data(shape, dtype, "x"), layout)
    c = shape[1]
    w = _data((c,), dtype, "w", offset=1.0) if affine else None
    b = _data((c,), dtype, "b") if affine else None
    mean, var = ref.channel_moments(x)
    got = _k(backend, "channel_moments_normalize")(_to(backend, x), 1e-5, _to(backend, w),
                                                   _to(backend, b))
    _check_outputs(got, (ref.channel_normalize(x, mean, var, 1e-5, w, b), mean, var), dtype,
                   ("channel_moments_normalize y", "mean", "var"))


def _moments_normalize_update_case(shape, dtype, layout, affine, backend: Backend) -> None:
    """The optional fused kernel with the running update against the reference's parts; the
    running inputs must come back untouched."""
    ref = normcore.get_backend(REFERENCE)
    x = _layout(_data(shape, dtype, "x"), layout)
    c = shape[1]
    w = _data((c,), dtype, "w", offset=1.0) if affine else None
    b = _data((c,), dtype, "b") if affine else None
    rm, rv = _data((c,), dtype, "rm"), np.abs(_data((c,), dtype, "rv")) + 0.1
    corr = shape[0] * shape[2] / max(shape[0] * shape[2] - 1, 1)
    mean, var = ref.channel_moments(x)
    want_rm, want_rv = ref.running_update(rm, rv, mean.reshape(1, c), var.reshape(1, c), 0.1, corr)
    brm, brv = _to(backend, rm), _to(backend, rv)
    got = _k(backend, "channel_moments_normalize_update")(
        _to(backend, x), 1e-5, _to(backend, w), _to(backend, b), brm, brv, 0.1, corr)
    _check_outputs(got, (ref.channel_normalize(x, mean, var, 1e-5, w, b), mean, var, want_rm,
                         want_rv), dtype, ("channel_moments_normalize_update y", "mean", "var",
                                           "new running_mean", "new running_var"))
    for name, arr, before in (("running_mean", brm, rm), ("running_var", brv, rv)):
        if not np.array_equal(normcore.to_numpy(arr), before):
            raise AssertionError(f"channel_moments_normalize_update mutated its {name} input")


def _group_case(shape, dtype, layout, affine, center, backend: Backend) -> None:
    ref = normcore.get_backend(REFERENCE)
    x = _layout(_data(shape, dtype, "x"), layout)
    dy = _layout(_data(shape, dtype, "dy", offset=0.0), layout)
    gd = shape[1:3]
    w = _data(gd, dtype, "w", offset=1.0) if affine else None
    b = _data(gd, dtype, "b") if affine else None
    got = _k(backend, "group_normalize")(_to(backend, x), _to(backend, w), _to(backend, b), 1e-5, center)
    want = ref.group_normalize(x, w, b, 1e-5, center)
    _check_outputs(got, want, dtype, ("group_normalize y", "mean", "var"))
    _, mean, var = want
    got = _k(backend, "group_normalize_backward")(_to(backend, dy), _to(backend, x), _to(backend, mean),
                                           _to(backend, var), 1e-5, _to(backend, w), center)
    want = ref.group_normalize_backward(dy, x, mean, var, 1e-5, w, center)
    _check_outputs(got, want, dtype, ("group dx", "group dweight", "group dbias"))


def _rows_case(shape, dtype, ddof, eps_in_root, backend: Backend) -> None:
    ref = normcore.get_backend(REFERENCE)
    x, dy = _data(shape, dtype, "x"), _data(shape, dtype, "dy", offset=0.0)
    got = _k(backend, "standardize_rows")(_to(backend, x), 1e-5, ddof, eps_in_root)
    want = ref.standardize_rows(x, 1e-5, ddof, eps_in_root)
    _check_outputs(got, want, dtype, ("standardize y", "mean", "denom"))
    _, mean, denom = want
    got = _k(backend, "standardize_rows_backward")(_to(backend, dy), _to(backend, x), _to(backend, mean),
                                            _to(backend, denom), 1e-5, ddof, eps_in_root)
    _check_outputs(got, ref.standardize_rows_backward(dy, x, mean, denom, 1e-5, ddof,
                                                      eps_in_root), dtype, ("standardize dx",))


def _running_case(batch, dtype, backend: Backend) -> None:
    ref = normcore.get_backend(REFERENCE)
    c = 5
    rm, rv = _data((c,), dtype, "rm"), np.abs(_data((c,), dtype, "rv")) + 0.1
    m, v = _data((batch, c), dtype, "m"), np.abs(_data((batch, c), dtype, "v"))
    for momentum, corr in ((0.1, 4 / 3), (1.0, 1.0), (0.0, 2.0), (0.25, 1.0)):
        got = _k(backend, "running_update")(_to(backend, rm), _to(backend, rv), _to(backend, m),
                                     _to(backend, v), momentum, corr)
        _check_outputs(got, ref.running_update(rm, rv, m, v, momentum, corr), dtype,
                       (f"running_mean (momentum={momentum})", "running_var"))
    before = normcore.to_numpy(_to(backend, rm)).copy()
    arr = _to(backend, rm)
    _k(backend, "running_update")(arr, _to(backend, rv), _to(backend, m), _to(backend, v), 0.5, 1.0)
    if not np.array_equal(normcore.to_numpy(arr), before):
        raise AssertionError("running_update mutated its running_mean input")


def _dropout_case(shape, dtype, p, layout, backend: Backend) -> None:
    x = _layout(_data(shape, dtype, "x"), layout)
    seed = 1234567891234567 + int(p * 100)
    y = normcore.to_numpy(_k(backend, "dropout")(_to(backend, x), p, seed))
    keep = dropout_keep_mask(shape, p, seed)
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)
    expected = (x.astype(np.float64) * keep * scale).astype(dtype)
    if y.dtype != np.dtype(dtype):
        raise AssertionError(f"dropout dtype {y.dtype}, expected {np.dtype(dtype)}")
    dropped = y == 0
    if not np.array_equal(dropped & (x != 0), ~keep & (x != 0)):
        raise AssertionError(f"dropout p={p}: mask differs from the contract's splitmix64 mask in "
                             f"{int((dropped != ~keep).sum())} of {y.size} elements")
    assert_close(y, expected, dtype, f"dropout p={p} values")


def _precision_case(kind: str, backend: Backend) -> None:
    """float32 with mean 1e4 and std 1: variance within 1e-3 relative of the float64 answer."""
    rng = _rng("precision", kind)
    x64 = rng.normal(1e4, 1.0, size=(4, 3, 4099))
    x32 = x64.astype(np.float32)
    truth = x32.astype(np.float64)
    if kind == "channel":
        _, var = _k(backend, "channel_moments")(backend.asarray(x32))
        want = truth.var(axis=(0, 2))
    else:
        _, _, var = _k(backend, "group_normalize")(backend.asarray(x32.reshape(12, 1, 4099, 1)), None,
                                            None, 1e-5, True)
        want = truth.reshape(12, -1).var(axis=1)
    got = normcore.to_numpy(var).astype(np.float64).ravel()
    rel = np.abs(got - want.ravel()) / want.ravel()
    if rel.max() > 1e-3:
        raise AssertionError(f"{kind} variance of float32 data with mean 1e4 is off by "
                             f"{rel.max():.2e} relative (limit 1e-3): accumulate in float64 or "
                             "use two passes")


def _precision_backward_case(layout: str, backend: Backend) -> None:
    """BatchNorm backward of float32 data with mean 1e4 and a mean-1 dy: dweight and dx within
    1e-3 (relative to their largest entry) of the float64 reference on the same values. Catches
    sums centred on a rounded mean (an error of ulp(1e4) * sum(dy), which is large here)."""
    ref = normcore.get_backend(REFERENCE)
    rng = _rng("precision-backward", layout)
    x32 = rng.normal(1e4, 1.0, size=(4, 3, 4099)).astype(np.float32)
    dy32 = rng.normal(1.0, 1.0, size=x32.shape).astype(np.float32)
    mean, var = ref.channel_moments(x32)  # float32 statistics, as the forward saves them
    want = ref.channel_normalize_backward(dy32.astype(np.float64), x32.astype(np.float64),
                                          mean.astype(np.float64), var.astype(np.float64), 1e-5,
                                          None, True)
    got = _k(backend, "channel_normalize_backward")(
        _to(backend, _layout(dy32, layout)), _to(backend, _layout(x32, layout)), _to(backend, mean),
        _to(backend, var), 1e-5, None, True)
    for name, a, e in zip(("dx", "dweight", "dbias"), got, want, strict=True):
        a = normcore.to_numpy(a).astype(np.float64)
        err = np.abs(a - e).max() / np.abs(e).max()
        if err > 1e-3:
            raise AssertionError(f"channel_normalize_backward {name} of float32 data with mean 1e4 "
                                 f"({layout}) is off by {err:.2e} of its largest entry (limit 1e-3)")


def _constant_case(backend: Backend) -> None:
    """A constant input normalizes to exact zeros (plus bias), never NaN."""
    x = np.full((3, 4, 5), 7.25, dtype=np.float32)
    m, v = _k(backend, "channel_moments")(backend.asarray(x))
    y = normcore.to_numpy(_k(backend, "channel_normalize")(backend.asarray(x), m, v, 1e-5, None, None))
    y2, _, _ = _k(backend, "group_normalize")(backend.asarray(x.reshape(3, 2, 2, 5)), None, None, 1e-5,
                                       True)
    for name, arr in (("channel_normalize", y), ("group_normalize", normcore.to_numpy(y2))):
        if not np.isfinite(arr).all() or np.abs(arr).max() > 1e-6:
            raise AssertionError(f"{name} of a constant input gave {arr.ravel()[:3]}..., "
                                 "expected zeros")


def _same_nonfinite(got: Any, want: Any, what: str) -> None:
    a = np.asarray(normcore.to_numpy(got), dtype=np.float64)
    e = np.asarray(normcore.to_numpy(want), dtype=np.float64)
    for kind, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        if not np.array_equal(test(a), test(e)):
            raise AssertionError(f"{what}: {kind} at {int(test(a).sum())} places, expected "
                                 f"{int(test(e).sum())} (the reference's, as torch)")
    finite = np.isfinite(e)
    assert_close(a[finite], e[finite], "float32", what)


def _nonfinite_case(bad: float, backend: Backend) -> None:
    """One NaN or infinity in the input spreads as in the reference, which spreads it as torch:
    a centred row or channel holding it is all NaN; an RMS row holding an infinity is zeros and
    one NaN (x / inf); the other rows and channels are untouched."""
    ref = normcore.get_backend(REFERENCE)
    x = _data((3, 2, 4, 5), "float32", "nonfinite")  # (N, G, D, L): rows of G * D * L
    x.reshape(-1)[13] = bad
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for center in (True, False):
            got = _k(backend, "group_normalize")(_to(backend, x), None, None, 1e-5, center)[0]
            want = ref.group_normalize(x, None, None, 1e-5, center)[0]
            _same_nonfinite(got, want, f"group_normalize center={center}")
        x3 = x.reshape(3, 8, 5)
        m, v = _k(backend, "channel_moments")(_to(backend, x3))
        mr, vr = ref.channel_moments(x3)
        _same_nonfinite(m, mr, "channel_moments mean")
        y = _k(backend, "channel_normalize")(_to(backend, x3), m, v, 1e-5, None, None)
        _same_nonfinite(y, ref.channel_normalize(x3, mr, vr, 1e-5, None, None), "channel_normalize")


def _reference_cases() -> list[Case]:
    cases: list[Case] = []
    ch = ("channel_moments", "channel_normalize", "channel_normalize_backward")
    gr = ("group_normalize", "group_normalize_backward")
    for dtype in ("float64", "float32", "float16"):
        for shape in ((1, 1, 2), (2, 3, 5), (7, 4, 13), (3, 17, 1), (1, 2, 31)):
            for layout in ("contiguous", "channels_last", "sliced", "outer_sliced"):
                for affine in (True, False):
                    cases.append(Case(
                        f"channel:{'x'.join(map(str, shape))}:{layout}:affine={affine}:{dtype}",
                        functools.partial(_channel_case, shape, dtype, layout, affine), ch,
                        dtype=dtype))
                    cases.append(Case(
                        f"channel-fused:{'x'.join(map(str, shape))}:{layout}:affine={affine}:"
                        f"{dtype}", functools.partial(_moments_normalize_case, shape, dtype,
                                                      layout, affine),
                        ("channel_moments_normalize",), dtype=dtype))
                    cases.append(Case(
                        f"channel-fused-update:{'x'.join(map(str, shape))}:{layout}:"
                        f"affine={affine}:{dtype}",
                        functools.partial(_moments_normalize_update_case, shape, dtype, layout,
                                          affine), ("channel_moments_normalize_update",),
                        dtype=dtype))
        for shape in ((1, 1, 1, 2), (3, 1, 7, 1), (2, 3, 4, 5), (5, 4, 1, 9), (2, 1, 37, 3)):
            for layout in ("contiguous", "sliced", "fortran"):
                for affine, center in ((True, True), (False, True), (True, False),
                                       (False, False)):
                    cases.append(Case(
                        f"group:{'x'.join(map(str, shape))}:{layout}:affine={affine}:"
                        f"center={center}:{dtype}",
                        functools.partial(_group_case, shape, dtype, layout, affine, center), gr,
                        dtype=dtype))
        for shape in ((1, 2), (4, 27), (3, 5)):
            for ddof, root in ((0, True), (1, False), (1, True), (0, False)):
                cases.append(Case(
                    f"rows:{'x'.join(map(str, shape))}:ddof={ddof}:eps_in_root={root}:{dtype}",
                    functools.partial(_rows_case, shape, dtype, ddof, root),
                    ("standardize_rows", "standardize_rows_backward"), dtype=dtype))
        for batch in (1, 3):
            cases.append(Case(f"running_update:B={batch}:{dtype}",
                              functools.partial(_running_case, batch, dtype), ("running_update",),
                              dtype=dtype))
        for p in (0.0, 0.1, 0.5, 0.999, 1.0):
            for layout in ("contiguous", "sliced"):
                cases.append(Case(f"dropout:p={p}:{layout}:{dtype}",
                                  functools.partial(_dropout_case, (3, 5, 7), dtype, p, layout),
                                  ("dropout",), dtype=dtype))
    for shape in ((64, 3, 211), (3, 64, 257)):
        for layout in ("contiguous", "channels_last"):
            cases.append(Case(f"channel-big:{'x'.join(map(str, shape))}:{layout}:float32",
                              functools.partial(_channel_case, shape, "float32", layout, True),
                              ch, big=True))
            cases.append(Case(f"channel-fused-big:{'x'.join(map(str, shape))}:{layout}:float32",
                              functools.partial(_moments_normalize_case, shape, "float32", layout,
                                                True), ("channel_moments_normalize",), big=True))
    for shape in ((64, 3, 211), (3, 64, 257), (64, 8, 16), (64, 8, 64), (4096, 16, 1)):
        for dtype in ("float32", "float16"):
            cases.append(Case(
                f"channel-fused-update-big:{'x'.join(map(str, shape))}:{dtype}",
                functools.partial(_moments_normalize_update_case, shape, dtype, "contiguous",
                                  True), ("channel_moments_normalize_update",), big=True,
                dtype=dtype))
    for shape in ((1031, 1, 129, 1), (4, 8, 3, 1031), (2, 2, 1, 4099)):
        cases.append(Case(f"group-big:{'x'.join(map(str, shape))}:float32",
                          functools.partial(_group_case, shape, "float32", "contiguous", True,
                                            True), gr, big=True))
    cases.append(Case("precision:channel", functools.partial(_precision_case, "channel"),
                      ("channel_moments",), big=True))
    cases.append(Case("precision:group", functools.partial(_precision_case, "group"),
                      ("group_normalize",), big=True))
    for layout in ("contiguous", "sliced", "channels_last"):
        cases.append(Case(f"precision-backward:{layout}",
                          functools.partial(_precision_backward_case, layout),
                          ("channel_normalize_backward",), big=True))
    cases.append(Case("constant-input", _constant_case, ch[:2] + gr[:1]))
    for name, bad in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)):
        cases.append(Case(f"nonfinite:{name}", functools.partial(_nonfinite_case, bad),
                          ch[:2] + gr[:1]))
    return cases


def all_cases() -> list[Case]:
    """Every conformance case: torch goldens first, then the kernel-by-kernel comparisons, then
    the paths that write state (:mod:`normcore.testing.state_cases`)."""
    from .state_cases import state_cases
    from .sync_cases import sync_cases

    return _golden_cases() + _reference_cases() + state_cases() + sync_cases()


def applies(case: Case, backend: Backend) -> bool:
    """False for a case of an optional kernel the backend does not list: the layers never call
    it there, so there is nothing to verify (not a skip)."""
    return not (set(case.kernels) & set(OPTIONAL_KERNELS)) - set(backend.kernels)


def takes_dtype(case: Case, backend: Backend) -> bool:
    """Whether the backend holds the case's dtype (array-api-strict has no float16, JAX without
    x64 no float64): a case of another dtype is skipped, not failed."""
    return np.dtype(case.dtype) in {np.dtype(d) for d in backend.dtypes}


def verify(backend: str | Backend, quick: bool = False,
           progress: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Run every case that applies to ``backend``; cases needing kernels it lacks are skipped."""
    be = backend if isinstance(backend, Backend) else normcore.get_backend(backend)
    implemented = set(be.kernels) | (set(KERNELS) if _fallback_on() else set())
    results = []
    for case in all_cases():
        if (quick and case.big) or not applies(case, be):
            continue
        missing = set(case.kernels) - implemented
        if not takes_dtype(case, be):
            result = CaseResult(case.id, True, f"skipped: the backend takes no {case.dtype}",
                                skipped=True)
        elif missing:
            result = CaseResult(case.id, True, f"skipped: kernels not implemented "
                                f"{sorted(missing)}", skipped=True)
        else:
            start = time.perf_counter()
            try:
                case.run(be)
                result = CaseResult(case.id, True, seconds=time.perf_counter() - start)
            except Exception as exc:  # a report, not a crash: every case runs
                result = CaseResult(case.id, False, f"{type(exc).__name__}: {exc}",
                                    time.perf_counter() - start)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def _fallback_on() -> bool:
    from normcore.config import settings
    return settings.fallback
