"""Direct comparisons with torch (skipped when torch is not installed): a torch state_dict loads
and reproduces torch's evaluation output, on every backend, in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

import normcore
from normcore import layers

torch = pytest.importorskip("torch")

#: Every normalization module of the layer table in its test configuration, plus variants.
LAYERS = [(row.name, row.test.kwargs, row.test.shape) for row in layers.modules()] + [
    ("BatchNorm2d", dict(num_features=4, momentum=None), (3, 4, 5, 5)),
]


@pytest.mark.parametrize("dtype,rtol", [("float32", 2e-4), ("float64", 1e-7)])
@pytest.mark.parametrize("name,kwargs,shape", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_torch_state_dict_reproduces_torch_eval_output(name, kwargs, shape, dtype, rtol, backend):
    rng = np.random.default_rng(0)
    theirs = getattr(torch.nn, name)(**kwargs, dtype=getattr(torch, dtype))
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.tensor(rng.uniform(0.5, 1.5, size=p.shape)))
    for step in range(3):  # train a little so the running statistics are not the defaults
        theirs(torch.tensor(rng.normal(step, 2.0, size=shape), dtype=getattr(torch, dtype)))
    theirs.eval()
    ours = getattr(normcore, name)(**kwargs, dtype=dtype, backend=backend).eval()
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = rng.normal(1.0, 3.0, size=shape).astype(dtype)
    want = theirs(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(normcore.to_numpy(ours(x)), want, rtol=rtol,
                               atol=rtol * np.abs(want).max())
    assert set(ours.state_dict()) == set(theirs.state_dict())



TORCH_BIAS_FALSE = [
    ("BatchNorm1d", dict(num_features=3), (5, 3, 4)),
    ("BatchNorm2d", dict(num_features=3), (4, 3, 2, 2)),
    ("InstanceNorm1d", dict(num_features=3, affine=True, track_running_stats=True), (4, 3, 5)),
    ("GroupNorm", dict(num_groups=1, num_channels=3), (4, 3, 5)),
]


@pytest.mark.parametrize("name,kwargs,shape", TORCH_BIAS_FALSE, ids=[n for n, _, _ in TORCH_BIAS_FALSE])
def test_bias_false_matches_torch(name, kwargs, shape, backend):
    """torch 2.13's keyword-only ``bias=False``: a weight, no bias, no ``bias`` key."""
    rng = np.random.default_rng(4)
    theirs = getattr(torch.nn, name)(**kwargs, bias=False, dtype=torch.float64)
    ours = getattr(normcore, name)(**kwargs, bias=False, dtype="float64", backend=backend)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    w = rng.uniform(0.5, 1.5, size=3)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(w))
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = rng.normal(size=shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    dy = rng.normal(size=shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(normcore.to_numpy(ours(x)), yt.detach().numpy(), rtol=1e-9,
                               atol=1e-9)
    np.testing.assert_allclose(normcore.to_numpy(ours.backward(dy)), xt.grad.numpy(), rtol=1e-8,
                               atol=1e-9)
    np.testing.assert_allclose(normcore.to_numpy(ours.weight.grad), theirs.weight.grad.numpy(),
                               rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_eps_0_matches_torch_on_constant_planes(affine, backend):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 6))
    x[1, 2] = -4.0
    theirs = torch.nn.InstanceNorm1d(3, eps=0.0, affine=affine, dtype=torch.float64)
    ours = normcore.InstanceNorm1d(3, eps=0.0, affine=affine, dtype="float64", backend=backend)
    if affine:
        with torch.no_grad():
            theirs.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    dy = rng.normal(size=x.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(normcore.to_numpy(ours(x)), yt.detach().numpy(), rtol=1e-9,
                               atol=1e-9)
    np.testing.assert_allclose(normcore.to_numpy(ours.backward(dy)), xt.grad.numpy(), rtol=1e-8,
                               atol=1e-9)
    if affine:
        for p, q in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
            np.testing.assert_allclose(normcore.to_numpy(p.grad), q.grad.numpy(), rtol=1e-8,
                                       atol=1e-9)
