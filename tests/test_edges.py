"""Numerics at the edges (issue #29): every backend agrees with the reference, which agrees with
torch where torch defines the behaviour.

* float32 input of magnitude 3e18 .. 1e37, whose squares overflow float32 sums: statistics,
  outputs, running statistics and gradients as the reference's (float64 sums) gives them;
* a channel whose first element is +inf: running_mean inf, as torch's and the reference's;
* a constant channel, row, group or filter normalizes to exact zeros (plus bias), with finite
  gradients, for float16, float32 and float64, on every layer.

The inputs are small enough for the CUDA simulator (``NORMCORE_TEST_BACKEND=numba-cuda``).
"""

from __future__ import annotations

import numpy as np
import pytest

import normcore
import normcore.functional as F

# the NumPy reference warns about the overflows and invalid values it computes, as NumPy does
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _np(a):
    return None if a is None else np.asarray(normcore.to_numpy(a), dtype=np.float64)


def _agree(got, want, what, rtol=2e-4):
    """The same NaN/+inf/-inf places, and the finite values within rtol of the largest."""
    a, e = _np(got), _np(want)
    assert a.shape == e.shape, what
    for kind, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        assert np.array_equal(test(a), test(e)), (
            f"{what}: {kind} at {int(test(a).sum())} places, the reference has {int(test(e).sum())}")
    f = np.isfinite(e)
    if f.any():
        scale = max(np.abs(e[f]).max(), np.finfo(np.float64).tiny)
        err = np.abs(a[f] - e[f]).max() / scale
        assert err <= rtol, f"{what}: off by {err:.2e} of its largest entry {scale:.3g}"


# ---------------------------------------------------------------------- float32 overflow
def _layers(backend):
    """(name, module) pairs; each takes an input of shape (2, 8, 256) or its reshape below."""
    return [
        ("LayerNorm", normcore.LayerNorm(1024, backend=backend)),
        ("RMSNorm", normcore.RMSNorm(1024, backend=backend)),
        ("GroupNorm", normcore.GroupNorm(2, 8, backend=backend)),
        ("InstanceNorm1d", normcore.InstanceNorm1d(8, affine=True, track_running_stats=True,
                                                   backend=backend)),
        ("BatchNorm1d", normcore.BatchNorm1d(8, backend=backend)),
        ("BatchNorm1d-2d", normcore.BatchNorm1d(16, backend=backend)),
        ("BatchNorm2d", normcore.BatchNorm2d(8, backend=backend)),
        ("BatchNorm2d-nhwc", normcore.BatchNorm2d(8, backend=backend)),
    ]


def _shaped(name, x):
    """x of (2, 8, 256) as the layer takes it (rows of 1024: 32 terms for each of 32 lanes)."""
    if name in ("LayerNorm", "RMSNorm"):
        return x.reshape(4, 1024)
    if name == "BatchNorm1d-2d":
        return x.reshape(256, 16)
    if name == "BatchNorm2d":
        return x.reshape(2, 8, 16, 16)
    if name == "BatchNorm2d-nhwc":  # NCHW shape, channels-last strides
        return np.ascontiguousarray(x.reshape(2, 8, 16, 16).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    return x


def _run(layer, x, dy):
    y = layer(x)
    dx = layer.backward(dy)
    out = {"y": y, "dx": dx}
    for pname, p in layer.named_parameters():
        out[f"d{pname}"] = p.grad
    for bname in ("running_mean", "running_var"):
        if getattr(layer, bname, None) is not None:
            out[bname] = getattr(layer, bname)
    return out


@pytest.mark.parametrize("scale", [3e18, 1e36, 1e37])
@pytest.mark.parametrize("index", range(8))
def test_huge_float32_input_gives_the_references_answer(backend, scale, index):
    """The squares of |x| ~ 3e18 overflow a float32 sum of a few dozen terms (LayerNorm gave
    zeros, BatchNorm an infinite running_var), and at 1e36 .. 1e37 every square does (NaN
    outputs and an infinite running_mean): the statistics must come out as float64 sums give
    them. The backward of such input sums dy * (x - mean), which overflows float32 as well."""
    rng = np.random.default_rng(7)
    x0 = (rng.standard_normal((2, 8, 256)) * scale).astype(np.float32)
    dy0 = rng.standard_normal((2, 8, 256)).astype(np.float32)
    name = _layers("numpy")[index][0]
    x, dy = _shaped(name, x0), _shaped(name, dy0)
    got = _run(_layers(backend)[index][1], x, dy)
    want = _run(_layers("numpy")[index][1], x, dy)
    for key, e in want.items():
        _agree(got[key], e, f"{name} {key} at |x| ~ {scale:g}")


@pytest.mark.parametrize("scale", [3e18, 1e36])
def test_huge_float32_weight_standardization(backend, scale):
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((4, 8, 16, 16)) * scale).astype(np.float32)
    dy = rng.standard_normal(w.shape).astype(np.float32)
    (y, s), (y0, s0) = (F.weight_standardization(w, backend=b) for b in (backend, "numpy"))
    _agree(y, y0, f"weight_standardization at |x| ~ {scale:g}")
    _agree(F.weight_standardization_backward(dy, s), F.weight_standardization_backward(dy, s0),
           f"weight_standardization backward at |x| ~ {scale:g}")


# ---------------------------------------------------------------------- +inf first
@pytest.mark.parametrize("layer", ["BatchNorm1d", "InstanceNorm1d"])
def test_infinite_first_element_gives_an_infinite_running_mean(backend, layer):
    """A channel whose first element is +inf has mean +inf (torch: running_mean inf, running_var
    NaN); a shift by that first element computed inf - inf = NaN."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 40)).astype(np.float32)
    x[0, :2, 0] = np.inf  # channels 0 and 1; channel 2 stays finite
    x[1, 1, 5] = -3.0e38  # and a large finite value after it
    mods = {}
    for b in (backend, "numpy"):
        mods[b] = getattr(normcore, layer)(3, track_running_stats=True, backend=b)
        mods[b](x)
    rm, rv = _np(mods[backend].running_mean), _np(mods[backend].running_var)
    assert np.isposinf(rm[:2]).all() and np.isfinite(rm[2]), rm
    _agree(rm, mods["numpy"].running_mean, f"{layer} running_mean")
    _agree(rv, mods["numpy"].running_var, f"{layer} running_var")


def test_infinite_first_element_running_mean_as_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(9).standard_normal((4, 3, 40)).astype(np.float32)
    x[0, :2, 0] = np.inf
    for layer in ("BatchNorm1d", "InstanceNorm1d"):
        mine = getattr(normcore, layer)(3, track_running_stats=True, backend="numpy")
        theirs = getattr(torch.nn, layer)(3, track_running_stats=True)
        mine(x)
        theirs(torch.from_numpy(x))
        np.testing.assert_array_equal(np.isposinf(_np(mine.running_mean)),
                                      np.isposinf(theirs.running_mean.numpy()))
        _agree(mine.running_mean, theirs.running_mean.numpy(), f"{layer} running_mean vs torch")
        _agree(mine.running_var, theirs.running_var.numpy(), f"{layer} running_var vs torch")


# ---------------------------------------------------------------------- constant input
#: Constants whose float64 mean by a plain sum is not exactly themselves for these counts
#: (np.full(n, c).mean() != c): 1.7e18-ish with a full mantissa, and some ordinary ones.
_CONSTANTS = {
    np.float64: [1.7010828348684465e18, 1.7000280969803986e18, 0.1, 1234.5678],
    np.float32: [0.1, 1234.5678, 3.0e18, 7.25],
    np.float16: [0.1, 1234.0, 7.25, -3.3],
}


def _constant_layers(backend, dtype):
    kw = {"backend": backend, "dtype": dtype}
    return [
        ("BatchNorm1d", normcore.BatchNorm1d(3, **kw), (5, 3, 103)),
        ("BatchNorm1d-2d", normcore.BatchNorm1d(3, **kw), (103, 3)),
        ("BatchNorm2d", normcore.BatchNorm2d(3, **kw), (2, 3, 9, 7)),
        ("InstanceNorm1d", normcore.InstanceNorm1d(3, **kw), (2, 3, 103)),
        ("LayerNorm", normcore.LayerNorm(103, **kw), (6, 103)),
        ("GroupNorm", normcore.GroupNorm(2, 4, **kw), (2, 4, 55)),
    ]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=lambda d: d.__name__)
def test_constant_input_normalizes_to_exact_zeros(backend, dtype):
    """The constant-input rule: zeros, not NaN or noise, whatever the constant. The reference's
    np.mean of a float64 column of 1.7e18 was off by an ulp, whose square became the variance,
    and the column normalized to +-1."""
    for c in _CONSTANTS[dtype]:
        for name, layer, shape in _constant_layers(backend, dtype):
            x = np.full(shape, c, dtype)
            y = _np(layer(x))
            assert np.array_equal(y, np.zeros(shape)), f"{name} of {c!r} ({dtype.__name__}): {y.ravel()[:3]}"
            dx = _np(layer.backward(np.ones(shape, dtype)))
            assert np.isfinite(dx).all(), f"{name} backward of {c!r} ({dtype.__name__})"
        w = np.full((3, 4, 5, 7), c, dtype)
        for kw in ({}, {"unbiased": True, "eps_in_root": False}):
            y, saved = F.weight_standardization(w, backend=backend, **kw)
            assert np.array_equal(_np(y), np.zeros(w.shape)), (
                f"weight_standardization{kw} of {c!r} ({dtype.__name__}): {_np(y).ravel()[:3]}")
            dx = _np(F.weight_standardization_backward(np.ones_like(w), saved))
            assert np.isfinite(dx).all(), f"weight_standardization{kw} backward of {c!r}"


def test_constant_float64_channel_mean_is_exact_on_the_reference():
    """The statistics themselves: mean exactly the constant, variance exactly 0."""
    be = normcore.get_backend("numpy")
    c = 1.7010828348684465e18
    x = np.full((1, 2, 103), c)
    assert np.full(103, c).mean() != c  # the plain mean is off
    mean, var = be.channel_moments(x)
    assert np.array_equal(mean, [c, c]) and np.array_equal(var, [0.0, 0.0])
    _, mean, var = be.group_normalize(x.reshape(1, 2, 103, 1), None, None, 1e-5, True)
    assert np.array_equal(mean, [[c, c]]) and np.array_equal(var, [[0.0, 0.0]])
    _, mean, denom = be.standardize_rows(x.reshape(2, 103), 1e-5, 0, True)
    assert np.array_equal(mean, [c, c]) and np.array_equal(denom, np.sqrt([1e-5, 1e-5]))
