"""Direct comparisons with torch (skipped when torch is not installed): a torch state_dict loads
and reproduces torch's evaluation output, on every backend, in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

import normcore

torch = pytest.importorskip("torch")

LAYERS = [
    ("BatchNorm1d", dict(num_features=4), (6, 4, 3)),
    ("BatchNorm2d", dict(num_features=4, momentum=None), (3, 4, 5, 5)),
    ("BatchNorm3d", dict(num_features=2), (2, 2, 3, 3, 3)),
    ("InstanceNorm2d", dict(num_features=4, affine=True, track_running_stats=True), (3, 4, 5, 5)),
    ("LayerNorm", dict(normalized_shape=[5, 5]), (3, 4, 5, 5)),
    ("GroupNorm", dict(num_groups=2, num_channels=4), (3, 4, 5, 5)),
    ("RMSNorm", dict(normalized_shape=[5]), (3, 4, 5)),
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

