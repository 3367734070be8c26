"""Module behaviour: parameters, gradient accumulation, train/eval, state_dict, dropout, to()."""

from __future__ import annotations

import numpy as np
import pytest

import normcore
from normcore import layers

#: Every normalization module of the layer table (normcore/layers.py), in its small test
#: configuration, plus variants of other ranks: name -> (factory of a backend, input shape).
ALL_LAYERS = {
    **{row.name: ((lambda b, row=row: getattr(normcore, row.name)(**row.test.kwargs, backend=b)),
                  row.test.shape) for row in layers.modules()},
    "BatchNorm1d-2d": (lambda b: normcore.BatchNorm1d(3, backend=b), (4, 3)),
    "GroupNorm-3d": (lambda b: normcore.GroupNorm(2, 4, backend=b), (2, 4, 3)),
    "RMSNorm-2d": (lambda b: normcore.RMSNorm(5, backend=b), (3, 5)),
}

STATE_KEYS = {
    "BatchNorm1d": ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"],
    "BatchNorm2d": ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"],
    "BatchNorm3d": ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"],
    "InstanceNorm1d": ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"],
    "InstanceNorm2d": ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"],
    "InstanceNorm3d": ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"],
    "LayerNorm": ["bias", "weight"],
    "GroupNorm": ["bias", "weight"],
    "RMSNorm": ["weight"],
    "BatchNorm1d-2d": ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"],
    "GroupNorm-3d": ["bias", "weight"],
    "RMSNorm-2d": ["weight"],
}


@pytest.mark.parametrize("name", sorted(ALL_LAYERS))
def test_gradients_accumulate_until_zero_grad(name, backend, rng):
    factory, shape = ALL_LAYERS[name]
    layer = factory(backend)
    assert all(p.grad is None for p in layer.parameters())
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    layer(x)
    layer.backward(dy)
    first = [normcore.to_numpy(p.grad).copy() for p in layer.parameters()]
    layer(x)
    layer.backward(dy)
    for g1, p in zip(first, layer.parameters(), strict=True):
        np.testing.assert_allclose(normcore.to_numpy(p.grad), 2 * g1, rtol=1e-5, atol=1e-6)
    layer.zero_grad()
    assert all(p.grad is None for p in layer.parameters())
    layer(x)
    layer.backward(dy)
    layer.zero_grad(set_to_none=False)
    for p in layer.parameters():
        np.testing.assert_array_equal(normcore.to_numpy(p.grad), 0)


@pytest.mark.parametrize("name", sorted(ALL_LAYERS))
def test_state_dict_keys_and_round_trip(name, backend, rng):
    factory, shape = ALL_LAYERS[name]
    layer = factory(backend)
    assert sorted(layer.state_dict()) == STATE_KEYS[name]
    x = rng.normal(size=shape).astype(np.float32)
    for _ in range(2):
        layer(x)
        layer.backward(x)
        for p in layer.parameters():
            p.data = p.data - 0.1 * p.grad
    state = layer.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    other = factory(backend)
    other.load_state_dict(state)
    layer.eval()
    other.eval()
    np.testing.assert_array_equal(normcore.to_numpy(layer(x)), normcore.to_numpy(other(x)))
    state["weight"][...] = 123  # state_dict returns copies
    assert float(normcore.to_numpy(layer.weight.data).ravel()[0]) != 123


def test_state_dict_keys_follow_configuration():
    assert sorted(normcore.BatchNorm1d(3, affine=False).state_dict()) == \
        ["num_batches_tracked", "running_mean", "running_var"]
    assert normcore.BatchNorm1d(3, affine=False, track_running_stats=False).state_dict() == {}
    assert normcore.InstanceNorm1d(3).state_dict() == {}
    assert sorted(normcore.LayerNorm(3, bias=False).state_dict()) == ["weight"]
    assert normcore.LayerNorm(3, elementwise_affine=False).state_dict() == {}
    assert normcore.GroupNorm(1, 3, affine=False).state_dict() == {}
    assert normcore.BatchNorm1d(3).state_dict()["num_batches_tracked"].dtype == np.int64


def test_load_state_dict_reports_missing_and_unexpected_keys_like_torch():
    bn = normcore.BatchNorm1d(2)
    full = bn.state_dict()
    result = bn.load_state_dict(full)
    assert result == ([], []) and repr(result) == "<All keys matched successfully>"
    partial = {"weight": np.ones(2, np.float32), "extra": np.zeros(1)}
    missing, unexpected = bn.load_state_dict(partial, strict=False)
    assert missing == ["bias", "running_mean", "running_var"] and unexpected == ["extra"]
    assert bn.load_state_dict(partial, strict=False).missing_keys == missing
    torch = pytest.importorskip("torch")
    want = torch.nn.BatchNorm1d(2).load_state_dict(
        {k: torch.from_numpy(np.asarray(v)) for k, v in partial.items()}, strict=False)
    assert (sorted(want.missing_keys), sorted(want.unexpected_keys)) == (missing, unexpected)


def test_missing_num_batches_tracked_loads_like_torch():
    bn = normcore.BatchNorm1d(2)
    state = bn.state_dict()
    del state["num_batches_tracked"]
    bn.load_state_dict(state)
    assert int(bn.num_batches_tracked) == 0


def test_parameters_modes_and_repr(backend):
    bn = normcore.BatchNorm2d(4, backend=backend)
    assert [p.shape for p in bn.parameters()] == [(4,), (4,)]
    assert bn.training and not bn.eval().training and bn.train().training
    assert "BatchNorm2d(4" in repr(bn)
    assert normcore.BatchNorm2d(4, affine=False).weight is None
    ln = normcore.LayerNorm(3, dtype=np.float64, backend=backend)
    assert ln.weight.dtype == np.float64 and ln.bias.data.dtype == np.float64
    np.testing.assert_array_equal(normcore.to_numpy(ln.weight.data), 1)
    np.testing.assert_array_equal(normcore.to_numpy(ln.bias.data), 0)
    with pytest.raises(ValueError):
        bn.train("yes")


def test_momentum_none_is_cumulative_average(backend, rng):
    bn = normcore.BatchNorm1d(2, momentum=None, backend=backend)
    batches = [rng.normal(i, 1 + i, size=(8, 2)).astype(np.float32) for i in range(4)]
    for b in batches:
        bn(b)
    means = np.mean([b.astype(np.float64).mean(0) for b in batches], axis=0)
    vars_ = np.mean([b.astype(np.float64).var(0, ddof=1) for b in batches], axis=0)
    np.testing.assert_allclose(normcore.to_numpy(bn.running_mean), means, rtol=1e-5)
    # running_var starts at 1 and the first batch replaces it entirely (factor 1/1).
    np.testing.assert_allclose(normcore.to_numpy(bn.running_var), vars_, rtol=1e-5)


def test_no_tracking_uses_batch_stats_in_eval(backend, rng):
    bn = normcore.BatchNorm1d(3, track_running_stats=False, backend=backend).eval()
    x = rng.normal(5, 2, size=(6, 3)).astype(np.float32)
    y = normcore.to_numpy(bn(x))
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    assert bn.running_mean is None


def test_instance_norm_unbatched_matches_batched(backend, rng):
    inorm = normcore.InstanceNorm1d(3, affine=True, backend=backend)
    x = rng.normal(size=(3, 7)).astype(np.float32)
    y = normcore.to_numpy(inorm(x))
    dx = normcore.to_numpy(inorm.backward(np.ones_like(x)))
    y2 = normcore.to_numpy(inorm(x[None]))
    assert y.shape == (3, 7) and dx.shape == (3, 7)
    np.testing.assert_allclose(y, y2[0], rtol=1e-6)


def test_instance_norm_mismatched_channels_warns_without_affine(backend):
    with pytest.warns(UserWarning, match="does not match num_features"):
        normcore.InstanceNorm1d(4, backend=backend)(np.ones((2, 3, 5), np.float32))


def test_dropout_seeded_train_and_eval(backend):
    x = np.ones((50, 40), np.float32)
    a = normcore.to_numpy(normcore.Dropout(0.25, seed=7, backend=backend)(x))
    b = normcore.to_numpy(normcore.Dropout(0.25, seed=7, backend=backend)(x))
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, np.float32(1 / 0.75)}
    assert 0.2 < (a == 0).mean() < 0.3
    drop = normcore.Dropout(0.25, rng=np.random.default_rng(3), backend=backend)
    first, second = normcore.to_numpy(drop(x)), normcore.to_numpy(drop(x))
    assert not np.array_equal(first, second)  # a new mask per call
    dx = normcore.to_numpy(drop.backward(x))
    np.testing.assert_array_equal(dx, second)
    drop.eval()
    np.testing.assert_array_equal(normcore.to_numpy(drop(x)), x)
    np.testing.assert_array_equal(normcore.to_numpy(normcore.Dropout(1.0, backend=backend)(x)), 0)
    np.testing.assert_array_equal(normcore.to_numpy(normcore.Dropout(0.0, backend=backend)(x)), x)


def test_dropout_masks_agree_across_backends():
    x = np.arange(1, 61, dtype=np.float32).reshape(6, 10)
    outs = {b.name: normcore.to_numpy(normcore.Dropout(0.5, seed=11, backend=b.name)(x))
            for b in normcore.list_backends(check=True) if b.available and b.device == "cpu"}
    ref = outs.pop("numpy")
    for name, y in outs.items():
        np.testing.assert_array_equal(y, ref, err_msg=name)


def test_to_moves_parameters_between_backends(rng):
    names = [b.name for b in normcore.list_backends(check=True) if b.available and b.device == "cpu"]
    ln = normcore.LayerNorm(4, backend=names[0])
    x = rng.normal(size=(3, 4)).astype(np.float32)
    ln(x)
    ln.backward(x)
    grad = normcore.to_numpy(ln.weight.grad).copy()
    ln.to(names[-1])
    assert ln.backend.name == names[-1]
    np.testing.assert_array_equal(normcore.to_numpy(ln.weight.grad), grad)


def test_use_backend_context_selects_the_layer_backend():
    with normcore.use_backend("numpy"):
        layer = normcore.GroupNorm(1, 2)
    assert layer.backend.name == "numpy"


def test_functional_takes_module_parameters_as_torch_does(backend, rng):
    """torch.nn.functional takes an nn.Parameter wherever it takes a tensor; normcore's functional
    API takes a module's Parameter the same way (its data), and checks it the same way."""
    import normcore.functional as F

    x = rng.normal(size=(4, 6, 5)).astype(np.float32)
    ln = normcore.LayerNorm(5, backend=backend)
    gn = normcore.GroupNorm(2, 6, backend=backend)
    bn = normcore.BatchNorm1d(6, backend=backend)
    for layer in (ln, gn, bn):
        state = layer.state_dict()
        layer.load_state_dict({k: (rng.normal(size=np.shape(v)).astype(np.float32)
                                   if k in ("weight", "bias") else v) for k, v in state.items()})

    def same(a, b):
        np.testing.assert_array_equal(normcore.to_numpy(a[0]), normcore.to_numpy(b[0]))

    same(F.layer_norm(x, 5, ln.weight, ln.bias, backend=backend),
         F.layer_norm(x, 5, ln.weight.data, ln.bias.data, backend=backend))
    same(F.group_norm(x, 2, gn.weight, gn.bias, backend=backend),
         F.group_norm(x, 2, gn.weight.data, gn.bias.data, backend=backend))
    same(F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, backend=backend),
         F.batch_norm(x, None, None, bn.weight.data, bn.bias.data, training=True, backend=backend))
    w = normcore.Parameter(normcore.get_backend(backend).asarray(x))
    same(F.weight_standardization(w, backend=backend),
         F.weight_standardization(w.data, backend=backend))
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\).*got \(5,\)"):
        F.group_norm(x, 2, ln.weight, backend=backend)  # a Parameter of the wrong shape


@pytest.mark.parametrize("name", sorted(ALL_LAYERS))
def test_reset_parameters_in_place_like_torch(name, backend, rng):
    """torch's reset_parameters fills the same Parameter objects (init.ones_, init.zeros_): an
    optimizer that holds them keeps updating the module's own."""
    factory, shape = ALL_LAYERS[name]
    layer = factory(backend)
    held = list(layer.parameters())
    x = rng.normal(size=shape).astype(np.float32)
    layer(x)
    layer.backward(x)
    for p in held:
        p.data = p.data - 0.5 * p.grad
    layer.reset_parameters()
    now = list(layer.parameters())
    assert len(now) == len(held) and all(a is b for a, b in zip(now, held, strict=True))
    for pname, p in layer.named_parameters():
        np.testing.assert_array_equal(normcore.to_numpy(p.data), 1.0 if pname == "weight" else 0.0)
    if getattr(layer, "track_running_stats", False):
        np.testing.assert_array_equal(normcore.to_numpy(layer.running_mean), 0.0)
        assert int(layer.num_batches_tracked) == 0
    assert [np.shape(b) for b in layer.buffers()] == [np.shape(b) for _, b in layer.named_buffers()]


@pytest.mark.parametrize("name", sorted(ALL_LAYERS))
def test_copies_and_pickles_keep_the_registry_backend(name, backend, rng):
    import copy
    import pickle

    factory, shape = ALL_LAYERS[name]
    layer = factory(backend)
    x = rng.normal(size=shape).astype(np.float32)
    layer(x)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer)), copy.copy(layer)):
        assert twin.backend is layer.backend is normcore.get_backend(backend)
        np.testing.assert_array_equal(normcore.to_numpy(twin.eval()(x)),
                                      normcore.to_numpy(layer.eval()(x)))
        layer.train()
