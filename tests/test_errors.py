"""Bad input raises a clear ValueError/TypeError/RuntimeError that says what was expected and
what came, and a failed call leaves the layer's state (running statistics, gradients) untouched."""

from __future__ import annotations

import numpy as np
import pytest

import normcore
from normcore import functional as F


def f32(*shape):
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _snapshot(layer):
    state = layer.state_dict()
    grads = {k: None if p.grad is None else normcore.to_numpy(p.grad).copy()
             for k, p in layer.named_parameters()}
    return state, grads


def _assert_unchanged(layer, snap):
    state, grads = snap
    now, now_grads = _snapshot(layer)
    assert now.keys() == state.keys()
    for k in state:
        np.testing.assert_array_equal(now[k], state[k], err_msg=k)
    for k in grads:
        if grads[k] is None:
            assert now_grads[k] is None
        else:
            np.testing.assert_array_equal(now_grads[k], grads[k])


FORWARD_ERRORS = [
    # (layer factory, bad input, exception, words the message must contain)
    (lambda b: normcore.BatchNorm2d(3, backend=b), f32(2, 3, 4), ValueError, ["4D", "3D"]),
    (lambda b: normcore.BatchNorm1d(3, backend=b), f32(2, 3, 4, 4), ValueError, ["2D or 3D", "4D"]),
    (lambda b: normcore.BatchNorm3d(3, backend=b), f32(2, 3, 4, 4), ValueError, ["5D", "4D"]),
    (lambda b: normcore.BatchNorm2d(3, backend=b), f32(2, 5, 4, 4), ValueError, ["3", "5"]),
    (lambda b: normcore.BatchNorm1d(3, backend=b), f32(1, 3), ValueError,
     ["more than 1 value per channel"]),
    (lambda b: normcore.BatchNorm2d(3, backend=b), f32(1, 3, 1, 1), ValueError,
     ["more than 1 value per channel"]),
    (lambda b: normcore.InstanceNorm1d(3, backend=b), f32(2, 3, 1), ValueError,
     ["more than 1 spatial element"]),
    (lambda b: normcore.InstanceNorm2d(3, backend=b), f32(3, 4), ValueError, ["3D or 4D", "2D"]),
    (lambda b: normcore.InstanceNorm2d(3, affine=True, backend=b), f32(2, 4, 3, 3), ValueError,
     ["num_features (3)", "4"]),
    (lambda b: normcore.GroupNorm(2, 4, backend=b), f32(2, 6, 3), ValueError, ["4", "6"]),
    (lambda b: normcore.LayerNorm(4, backend=b), f32(2, 5), RuntimeError,
     ["normalized_shape=[4]", "[2, 5]"]),
    (lambda b: normcore.LayerNorm((2, 4), backend=b), f32(4), RuntimeError, ["[*, 2, 4]"]),
    (lambda b: normcore.RMSNorm(4, backend=b), f32(3, 2), RuntimeError, ["[*, 4]", "[3, 2]"]),
    (lambda b: normcore.LayerNorm(4, backend=b), np.ones((2, 4), np.int64), TypeError,
     ["floating", "int64"]),
    (lambda b: normcore.BatchNorm1d(2, backend=b), np.ones((3, 2), np.float64), TypeError,
     ["float64", "float32"]),
    (lambda b: normcore.GroupNorm(2, 4, backend=b), np.ones((2, 4), np.int32), TypeError,
     ["int32"]),
    (lambda b: normcore.LayerNorm(4, backend=b), "not an array", TypeError, ["array"]),
]


@pytest.mark.parametrize("i", range(len(FORWARD_ERRORS)))
def test_bad_forward_raises_and_changes_nothing(i, backend):
    factory, x, exc, words = FORWARD_ERRORS[i]
    layer = factory(backend)
    snap = _snapshot(layer)
    with pytest.raises(exc) as info:
        layer(x)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    _assert_unchanged(layer, snap)


def test_failed_forward_after_training_keeps_running_stats_and_counter(backend):
    bn = normcore.BatchNorm2d(3, momentum=None, backend=backend)
    bn(f32(4, 3, 2, 2))
    snap = _snapshot(bn)
    with pytest.raises(ValueError):
        bn(f32(1, 3, 1, 1))
    with pytest.raises(TypeError):
        bn(np.ones((4, 3, 2, 2)))
    _assert_unchanged(bn, snap)
    assert int(bn.num_batches_tracked) == 1


def test_backward_before_forward_and_twice(backend):
    ln = normcore.LayerNorm(4, backend=backend)
    with pytest.raises(RuntimeError, match="before forward"):
        ln.backward(f32(2, 4))
    ln(f32(2, 4))
    ln.backward(f32(2, 4))
    with pytest.raises(RuntimeError, match="twice"):
        ln.backward(f32(2, 4))


@pytest.mark.parametrize("bad,exc,words", [
    (f32(2, 5), ValueError, ["(2, 4)", "(2, 5)"]),
    (np.ones((2, 4)), TypeError, ["float64", "float32"]),
    (np.ones((2, 4), np.int16), TypeError, ["int16"]),
])
def test_bad_grad_output_raises_and_keeps_grads(bad, exc, words, backend):
    ln = normcore.LayerNorm(4, backend=backend)
    ln(f32(2, 4))
    ln.backward(f32(2, 4))
    ln(f32(2, 4))
    snap = _snapshot(ln)
    with pytest.raises(exc) as info:
        ln.backward(bad)
    for w in words:
        assert w in str(info.value)
    _assert_unchanged(ln, snap)
    ln.backward(f32(2, 4))  # the forward's saved state survives the failed call


@pytest.mark.parametrize("make,exc,words", [
    (lambda: normcore.BatchNorm2d(3, eps=-1.0), ValueError, ["eps", "non-negative", "-1.0"]),
    (lambda: normcore.LayerNorm(3, eps=-1e-5), ValueError, ["eps"]),
    (lambda: normcore.GroupNorm(3, 4), ValueError, ["divisible"]),
    (lambda: normcore.GroupNorm(0, 4), ValueError, ["num_groups"]),
    (lambda: normcore.BatchNorm1d(0), ValueError, ["num_features"]),
    (lambda: normcore.BatchNorm1d(3, momentum=1.5), ValueError, ["momentum"]),
    (lambda: normcore.Dropout(1.5), ValueError, ["between 0 and 1", "1.5"]),
    (lambda: normcore.Dropout(-0.1), ValueError, ["between 0 and 1"]),
    (lambda: normcore.LayerNorm(()), ValueError, ["normalized_shape"]),
    (lambda: normcore.LayerNorm(4, dtype=np.int32), TypeError, ["floating"]),
    (lambda: normcore.LayerNorm(4, backend="nmupy"), RuntimeError, ["numpy", "Did you mean"]),
])
def test_bad_constructor_arguments(make, exc, words):
    with pytest.raises(exc) as info:
        make()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_functional_errors(backend):
    x = f32(4, 3)
    with pytest.raises(ValueError, match="running_mean"):
        F.batch_norm(x, None, None, training=False, backend=backend)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        F.batch_norm(x, np.zeros(4, np.float32), np.ones(4, np.float32), backend=backend)
    with pytest.raises(TypeError, match="weight dtype float64"):
        F.layer_norm(x, 3, weight=np.ones(3), backend=backend)
    with pytest.raises(ValueError, match="eps"):
        F.group_norm(f32(2, 4, 3), 2, eps=-1.0, backend=backend)
    with pytest.raises(ValueError, match="divisible"):
        F.group_norm(f32(2, 4, 3), 3, backend=backend)
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout(x, 2.0, backend=backend)
    _, saved = F.layer_norm(x, 3, backend=backend)
    with pytest.raises(ValueError, match="layer_norm"):
        F.batch_norm_backward(x, saved)
    with pytest.raises(ValueError, match="at least 2 values"):
        F.weight_standardization(f32(3, 1), unbiased=True, backend=backend)


def test_functional_failure_does_not_touch_running_stats(backend):
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError):
        F.batch_norm(np.ones((4, 3)), rm, rv, training=True, backend=backend)
    with pytest.raises(ValueError):
        F.batch_norm(f32(1, 3), rm, rv, training=True, backend=backend)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


def test_load_state_dict_errors_leave_the_layer_as_it_was():
    bn = normcore.BatchNorm1d(3)
    snap = _snapshot(bn)
    good = bn.state_dict()
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        bn.load_state_dict({**good, "weight": np.ones(4), "bias": np.full(3, 7.0)})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        bn.load_state_dict({**good, "extra": np.ones(3)})
    with pytest.raises(RuntimeError, match="Missing key"):
        bn.load_state_dict({k: v for k, v in good.items() if k != "running_var"})
    _assert_unchanged(bn, snap)
    inorm = normcore.InstanceNorm1d(3)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        inorm.load_state_dict({"running_mean": np.zeros(3), "running_var": np.ones(3)})


def test_empty_batch_returns_empty_output(backend):
    for layer, shape in ((normcore.BatchNorm2d(3, backend=backend), (0, 3, 4, 4)),
                         (normcore.LayerNorm(4, backend=backend), (0, 4)),
                         (normcore.GroupNorm(2, 4, backend=backend), (0, 4, 3)),
                         (normcore.InstanceNorm1d(3, affine=True, backend=backend), (0, 3, 5)),
                         (normcore.RMSNorm(4, backend=backend), (0, 4))):
        y = layer(np.zeros(shape, np.float32))
        assert y.shape == shape
        dx = layer.backward(np.zeros(shape, np.float32))
        assert dx.shape == shape
        for p in layer.parameters():
            np.testing.assert_array_equal(normcore.to_numpy(p.grad), 0)


def test_empty_batch_norm_counts_the_batch_like_torch(backend):
    bn = normcore.BatchNorm1d(3, backend=backend)
    bn(np.zeros((0, 3), np.float32))
    assert int(bn.num_batches_tracked) == 1
    np.testing.assert_array_equal(normcore.to_numpy(bn.running_mean), 0)
    np.testing.assert_array_equal(normcore.to_numpy(bn.running_var), 1)


def test_constant_input_gives_zeros_not_nan(backend):
    x = np.full((4, 3, 5), 2.5, np.float32)
    for layer in (normcore.BatchNorm1d(3, backend=backend), normcore.LayerNorm(5, backend=backend),
                  normcore.GroupNorm(3, 3, backend=backend),
                  normcore.InstanceNorm1d(3, backend=backend)):
        y = normcore.to_numpy(layer(x))
        assert np.isfinite(y).all()
        np.testing.assert_allclose(y, 0, atol=1e-6)
        dx = normcore.to_numpy(layer.backward(np.ones_like(x)))
        assert np.isfinite(dx).all()
