"""Issue #29's API and state findings (PyTorch's module test database and a hostile user): each
test here failed before its fix. Where torch defines the behaviour, torch 2.13 is the oracle."""

from __future__ import annotations

import numpy as np
import pytest

import normcore
from normcore import functional as F


def f32(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------------- bias=False
CHANNEL_LAYERS = [
    ("BatchNorm1d", lambda **k: normcore.BatchNorm1d(3, **k), (4, 3, 5)),
    ("BatchNorm2d", lambda **k: normcore.BatchNorm2d(3, **k), (4, 3, 2, 2)),
    ("BatchNorm3d", lambda **k: normcore.BatchNorm3d(3, **k), (2, 3, 2, 2, 2)),
    ("InstanceNorm1d", lambda **k: normcore.InstanceNorm1d(3, affine=True, **k), (4, 3, 5)),
    ("InstanceNorm2d", lambda **k: normcore.InstanceNorm2d(3, affine=True, **k), (4, 3, 2, 3)),
    ("InstanceNorm3d", lambda **k: normcore.InstanceNorm3d(3, affine=True, **k), (2, 3, 2, 2, 2)),
    ("GroupNorm", lambda **k: normcore.GroupNorm(1, 3, **k), (4, 3, 5)),
]


@pytest.mark.parametrize("name,make,shape", CHANNEL_LAYERS, ids=[c[0] for c in CHANNEL_LAYERS])
def test_bias_false_gives_a_weight_and_no_bias(name, make, shape, backend):
    layer = make(bias=False, backend=backend)
    assert layer.bias is None and layer.weight is not None
    assert "bias" not in layer.state_dict() and "weight" in layer.state_dict()
    x = f32(*shape)
    layer.weight.data = layer.backend.asarray(np.array([0.5, 2.0, -1.0], np.float32))
    y = normcore.to_numpy(layer(x))
    ref = make(backend="numpy")
    ref.weight.data = np.array([0.5, 2.0, -1.0], np.float32)
    np.testing.assert_allclose(y, ref(x), rtol=2e-5, atol=2e-5)
    layer.backward(np.ones_like(x))
    assert layer.weight.grad is not None
    assert [n for n, _ in layer.named_parameters()] == ["weight"]


def test_bias_is_keyword_only_as_in_torch():
    with pytest.raises(TypeError):
        normcore.GroupNorm(1, 3, 1e-5, True, False)  # torch: bias comes after `*`


# ---------------------------------------------------------------------- eps=0
def test_batch_norm_refuses_eps_0_in_training_like_torch(backend):
    bn = normcore.BatchNorm1d(3, eps=0.0, backend=backend)
    snap = bn.state_dict()
    with pytest.raises(ValueError, match="batch_norm eps must be positive during training, but got 0"):
        bn(f32(4, 3))
    assert int(bn.num_batches_tracked) == 0
    np.testing.assert_array_equal(bn.state_dict()["running_mean"], snap["running_mean"])
    with pytest.raises(ValueError, match="eps must be positive during training"):
        F.batch_norm(f32(4, 3), None, None, training=True, eps=0.0, backend=backend)
    bn.eval()
    np.testing.assert_array_equal(normcore.to_numpy(bn(np.ones((4, 3), np.float32))),
                                  np.ones((4, 3), np.float32))  # eval: allowed, as torch


@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_eps_0_on_a_constant_plane_gives_the_bias_like_torch(backend, affine):
    """torch's instance norm takes invstd = 0 where var == 0 and eps == 0: the output is the bias
    and the input gradient 0, not NaN."""
    x = f32(2, 3, 4)
    x[0, 1] = 2.5
    layer = normcore.InstanceNorm1d(3, eps=0.0, affine=affine, backend=backend)
    if affine:
        layer.bias.data = layer.backend.asarray(np.array([0.5, -1.0, 3.0], np.float32))
    y = normcore.to_numpy(layer(x))
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[0, 1], np.full(4, -1.0 if affine else 0.0, np.float32))
    ref = normcore.InstanceNorm1d(3, eps=1e-30, affine=affine, backend="numpy")
    np.testing.assert_allclose(np.delete(y.reshape(6, 4), 1, 0),
                               np.delete(normcore.to_numpy(ref(x)).reshape(6, 4) +
                                         (np.array([0.5, -1.0, 3.0] * 2, np.float32)[:, None]
                                          if affine else 0), 1, 0), rtol=1e-4, atol=1e-5)
    dx = normcore.to_numpy(layer.backward(f32(2, 3, 4, seed=1)))
    assert np.isfinite(dx).all() and np.all(dx[0, 1] == 0)
    if affine:
        assert np.isfinite(normcore.to_numpy(layer.weight.grad)).all()


@pytest.mark.parametrize("make,x", [
    (lambda b: normcore.LayerNorm(3, eps=0.0, backend=b), np.ones((2, 3), np.float32)),
    (lambda b: normcore.GroupNorm(1, 3, eps=0.0, backend=b), np.ones((2, 3, 4), np.float32)),
    (lambda b: normcore.RMSNorm(3, eps=0.0, backend=b), np.zeros((2, 3), np.float32)),
])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_row_norms_with_eps_0_on_a_constant_row_give_nan_like_torch(make, x, backend):
    assert np.isnan(normcore.to_numpy(make(backend)(x))).all()


# ---------------------------------------------------------------------- NumPy scalars
@pytest.mark.parametrize("make", [
    lambda: normcore.BatchNorm2d(3, eps=np.float32(1e-5), momentum=np.float64(0.1)),
    lambda: normcore.InstanceNorm1d(3, eps=np.float64(1e-5), momentum=np.float32(0.5)),
    lambda: normcore.LayerNorm(np.int64(3), eps=np.float16(1e-3)),
    lambda: normcore.GroupNorm(np.int32(1), np.int64(3), eps=np.float32(1e-5)),
    lambda: normcore.RMSNorm(3, eps=np.float32(1e-6)),
    lambda: normcore.Dropout(np.float32(0.5)),
    lambda: normcore.BatchNorm1d(3, eps=np.int64(1)),
])
def test_numpy_scalars_are_numbers(make):
    layer = make()
    for attr in ("eps", "momentum", "p"):
        value = getattr(layer, attr, None)
        if value is not None:
            assert type(value) is float, (attr, type(value))


def test_numpy_scalar_arguments_compute_like_python_ones(backend):
    x = f32(4, 3, 5)
    a = normcore.BatchNorm1d(3, eps=np.float32(0.5), momentum=np.float64(0.25), backend=backend)
    b = normcore.BatchNorm1d(3, eps=float(np.float32(0.5)), momentum=0.25, backend=backend)
    np.testing.assert_array_equal(normcore.to_numpy(a(x)), normcore.to_numpy(b(x)))
    np.testing.assert_array_equal(normcore.to_numpy(a.running_var), normcore.to_numpy(b.running_var))
    y, _ = F.layer_norm(f32(2, 3), 3, eps=np.float64(1e-3), backend=backend)
    y2, _ = F.dropout(f32(5), np.float32(0.5), seed=np.uint64(3), backend=backend)
    assert y.shape == (2, 3) and y2.shape == (5,)


@pytest.mark.parametrize("bad", [True, np.bool_(True), "0.1", np.array([0.1]), float("nan"), None])
def test_non_numbers_are_still_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        normcore.LayerNorm(3, eps=bad)


# ---------------------------------------------------------------------- RMSNorm float16 eps
def test_rms_norm_eps_none_on_float16_uses_float32_epsilon_like_torch(backend):
    """torch computes a float16 RMSNorm in float32 and takes float32's machine epsilon."""
    x = (f32(4, 8) * 1e-3).astype(np.float16)
    y = normcore.to_numpy(normcore.RMSNorm(8, dtype=np.float16, backend=backend)(x))
    xd = x.astype(np.float64)
    want = xd / np.sqrt((xd * xd).mean(-1, keepdims=True) + np.finfo(np.float32).eps)
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=2e-3, atol=2e-3)
    y2, _ = F.rms_norm(x, 8, backend=backend)
    np.testing.assert_array_equal(normcore.to_numpy(y2), y)


# ---------------------------------------------------------------------- unsupported array kinds
def test_masked_arrays_and_matrices_are_refused(backend):
    x = np.ma.masked_array(f32(4, 3), mask=np.zeros((4, 3), bool))
    for call in (lambda a: normcore.LayerNorm(3, backend=backend)(a),
                 lambda a: normcore.BatchNorm1d(3, backend=backend)(a),
                 lambda a: F.layer_norm(a, 3, backend=backend)):
        with pytest.raises(TypeError, match="MaskedArray"):
            call(x)
    with pytest.raises(TypeError, match="matrix"):
        normcore.LayerNorm(3, backend=backend)(np.asmatrix(f32(4, 3)))
    ln = normcore.LayerNorm(3, backend=backend)
    ln(f32(4, 3))
    with pytest.raises(TypeError, match="MaskedArray"):
        ln.backward(np.ma.masked_array(np.ones((4, 3), np.float32)))
    ln.weight.grad = None
    with pytest.raises(TypeError, match="MaskedArray"):
        F.layer_norm(f32(4, 3), 3, weight=np.ma.masked_array(np.ones(3, np.float32)),
                     backend=backend)


@pytest.mark.parametrize("dtype", [np.longdouble, np.complex64, np.int32, np.bool_])
def test_dtypes_no_backend_computes_are_refused_at_construction(dtype):
    if np.dtype(dtype) == np.float64:
        pytest.skip("long double is double on this platform")
    with pytest.raises(TypeError, match="float16/float32/float64"):
        normcore.LayerNorm(3, dtype=dtype)


# ---------------------------------------------------------------------- load_state_dict
@pytest.mark.parametrize("key,bad", [
    ("running_var", "abc"),
    ("running_var", np.array([object(), 1, 2], dtype=object)),
    ("num_batches_tracked", np.nan),
    ("num_batches_tracked", None),
    ("num_batches_tracked", 2**70),
    ("num_batches_tracked", 1.5),
    ("bias", np.array(["a", "b", "c"])),
])
def test_a_failed_load_state_dict_assigns_nothing(key, bad):
    bn = normcore.BatchNorm1d(3)
    bn(f32(4, 3))
    before = bn.state_dict()
    new = {k: v + 1 for k, v in before.items()}
    new[key] = bad
    with pytest.raises((RuntimeError, TypeError, ValueError)) as info:
        bn.load_state_dict(new)
    assert key in str(info.value)
    after = bn.state_dict()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_load_state_dict_takes_integral_counters_of_any_kind():
    bn = normcore.BatchNorm1d(3)
    for value in (np.int32(7), 7.0, np.array(7, np.int64), np.array([7])[0]):
        bn.load_state_dict({**bn.state_dict(), "num_batches_tracked": value})
        assert int(bn.num_batches_tracked) == 7 and bn.num_batches_tracked.dtype == np.int64


# ---------------------------------------------------------------------- read-only targets
@pytest.mark.parametrize("which", ["running_mean", "running_var"])
@pytest.mark.parametrize("op", ["batch_norm", "instance_norm"])
def test_functional_read_only_running_stats_change_nothing(op, which, backend):
    if normcore.get_backend(backend).name != "numpy" and \
            not isinstance(normcore.get_backend(backend).asarray(np.zeros(1)), np.ndarray):
        pytest.skip("read-only flags are NumPy's")
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    {"running_mean": rm, "running_var": rv}[which].flags.writeable = False
    x = f32(4, 3, 5)
    with pytest.raises(ValueError, match=f"{which}.*read-only"):
        if op == "batch_norm":
            F.batch_norm(x, rm, rv, training=True, backend=backend)
        else:
            F.instance_norm(x, rm, rv, use_input_stats=True, backend=backend)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


def test_inplace_dropout_on_a_read_only_input_changes_nothing(backend):
    drop = normcore.Dropout(0.5, inplace=True, seed=3, backend=backend)
    state = drop.rng.bit_generator.state
    x = np.ones(16, np.float32)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        drop(x)
    assert drop.rng.bit_generator.state == state
    with pytest.raises(RuntimeError, match="before forward"):
        drop.backward(np.ones(16, np.float32))


def test_a_read_only_input_is_read_not_refused(backend):
    """Only in-place writes need a writable array (the CUDA simulator's device arrays wrote into
    the host array they wrapped, and a read-only input failed there)."""
    x = f32(4, 8)
    x.flags.writeable = False
    want = normcore.to_numpy(normcore.LayerNorm(8, backend="numpy")(x))
    ln = normcore.LayerNorm(8, backend=backend)
    np.testing.assert_allclose(normcore.to_numpy(ln(x)), want, rtol=1e-5, atol=1e-5)
    dy = np.ones((4, 8), np.float32)
    dy.flags.writeable = False
    assert normcore.to_numpy(ln.backward(dy)).shape == (4, 8)
