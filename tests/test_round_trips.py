"""The output follows the input (issue #30): torch tensors and JAX arrays run on every CPU backend
and come back in their own library, equal to torch.nn's results."""

from __future__ import annotations

import numpy as np
import pytest

import normcore
from normcore import functional as F
from normcore import layers

torch = pytest.importorskip("torch")

#: Every normalization module of the layer table in its test configuration, plus variants.
LAYERS = [(row.name, row.test.kwargs, row.test.shape) for row in layers.modules()] + [
    ("InstanceNorm2d", dict(num_features=4, affine=True), (3, 4, 5, 5)),
    ("InstanceNorm3d", dict(num_features=2), (2, 2, 3, 3, 3)),
]
IDS = [n for n, _, _ in LAYERS]


def _pair(name, kwargs, backend):
    ours = getattr(normcore, name)(**kwargs, backend=backend)
    theirs = getattr(torch.nn, name)(**kwargs)
    rng = np.random.default_rng(len(name))
    state = {k: rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32)
             if v.is_floating_point() else v.numpy() for k, v in theirs.state_dict().items()}
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    ours.load_state_dict(state)
    return ours, theirs


@pytest.mark.parametrize("name,kwargs,shape", LAYERS, ids=IDS)
def test_torch_tensors_in_torch_tensors_out(name, kwargs, shape, backend):
    ours, theirs = _pair(name, kwargs, backend)
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        if step == 2:
            ours.eval()
            theirs.eval()
        x = torch.randn(shape, generator=gen) * 2 + step
        xt = x.clone().requires_grad_(True)
        want = theirs(xt)
        y = ours(x)
        assert type(y) is torch.Tensor and y.dtype == torch.float32 and y.shape == x.shape
        torch.testing.assert_close(y, want.detach(), rtol=2e-4, atol=2e-5)
        dy = torch.randn(shape, generator=gen)
        want.backward(dy)
        dx = ours.backward(dy)
        assert type(dx) is torch.Tensor
        torch.testing.assert_close(dx, xt.grad, rtol=2e-4, atol=2e-4)
    mine = ours.state_dict()
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(mine[key], value.numpy(), rtol=2e-4, atol=2e-5, err_msg=key)
    for pname, p in theirs.named_parameters():
        np.testing.assert_allclose(normcore.to_numpy(getattr(ours, pname).grad), p.grad.numpy(),
                                   rtol=2e-4, atol=2e-4, err_msg=pname)


def test_the_issue_example():
    x = torch.randn(4, 8)
    y = normcore.LayerNorm(8)(x)
    assert type(y) is torch.Tensor
    torch.testing.assert_close(y, torch.nn.LayerNorm(8)(x).detach())


@pytest.mark.parametrize("name,kwargs,shape", LAYERS, ids=IDS)
def test_jax_arrays_in_jax_arrays_out(name, kwargs, shape, backend):
    jax = pytest.importorskip("jax")
    ours, theirs = _pair(name, kwargs, backend)
    x = np.random.default_rng(1).normal(1.0, 2.0, size=shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    want = theirs(xt)
    y = ours(jax.numpy.asarray(x))
    assert isinstance(y, jax.Array) and y.dtype == np.float32
    np.testing.assert_allclose(np.asarray(y), want.detach().numpy(), rtol=2e-4, atol=2e-5)
    dy = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    want.backward(torch.tensor(dy))
    dx = ours.backward(jax.numpy.asarray(dy))
    assert isinstance(dx, jax.Array)
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=2e-4, atol=2e-4)


def test_functional_results_follow_the_input(backend):
    x = torch.randn(6, 4, 3)
    w, b = torch.rand(4) + 0.5, torch.randn(4)
    rm, rv = torch.zeros(4), torch.ones(4)
    y, saved = F.batch_norm(x, rm, rv, w, b, training=True, backend=backend)
    want_rm, want_rv = torch.zeros(4), torch.ones(4)
    want = torch.nn.functional.batch_norm(x, want_rm, want_rv, w, b, training=True)
    assert type(y) is torch.Tensor
    torch.testing.assert_close(y, want, rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(rm, want_rm)  # the caller's tensors, updated in place
    torch.testing.assert_close(rv, want_rv)
    grads = F.batch_norm_backward(torch.ones_like(x), saved)
    assert all(type(g) is torch.Tensor for g in grads)
    ws, wsaved = F.weight_standardization(torch.randn(3, 2, 3, 3), backend=backend)
    assert type(ws) is torch.Tensor
    assert type(F.weight_standardization_backward(torch.ones(3, 2, 3, 3), wsaved)) is torch.Tensor


def test_dropout_follows_the_input_and_inplace_writes_the_tensor(backend):
    t = torch.ones(64)
    drop = normcore.Dropout(0.5, inplace=True, seed=1, backend=backend)
    assert drop(t) is t and set(t.tolist()) == {0.0, 2.0}
    out = normcore.Dropout(0.5, seed=1, backend=backend)(torch.ones(64))
    assert type(out) is torch.Tensor and torch.equal(out, t)
    drop.eval()
    assert drop(t) is t


def test_a_device_array_on_a_cpu_backend_names_the_way_out(backend):
    if normcore.get_backend(backend).device != "cpu":
        pytest.skip("a device backend takes device arrays")
    class OnCuda:
        dtype = np.dtype(np.float32)

        def __dlpack__(self, **kwargs):
            raise AssertionError("must not be exported")

        def __dlpack_device__(self):
            return (2, 0)

    layer = normcore.LayerNorm(4, backend=backend)
    with pytest.raises(TypeError, match="CUDA device.*numba-cuda"):
        layer(OnCuda())


def test_array_api_strict_arrays_round_trip(backend):
    xp = pytest.importorskip("array_api_strict")
    x = np.random.default_rng(3).normal(size=(3, 8)).astype(np.float32)
    y = normcore.LayerNorm(8, backend=backend)(xp.asarray(x))
    assert type(y).__module__.startswith("array_api_strict")
    np.testing.assert_allclose(normcore.to_numpy(y),
                               normcore.LayerNorm(8, backend="numpy")(x), rtol=2e-5, atol=2e-5)
