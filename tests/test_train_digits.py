"""examples/train_digits.py: its NumPy layers' gradients, its torch twin (float64 losses equal to
1e-9 at every step, checked here on a few steps), a short run whose loss falls, and the plot."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
td = pytest.importorskip("train_digits")


def test_conv_and_linear_gradients_match_torch():
    torch = pytest.importorskip("torch")
    with td.threads(1):
        _check_layers(torch)


def _check_layers(torch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 8, 8))
    for standardize in (False, True):
        conv = td.Conv2d(4, 5, 3, rng, standardize=standardize)
        y = conv.forward(x)
        dy = rng.normal(size=y.shape)
        dx = conv.backward(dy)
        tx = torch.from_numpy(x.copy()).requires_grad_()
        tw = torch.from_numpy(conv.params["weight"].data.copy()).requires_grad_()
        w = tw
        if standardize:
            m, v = tw.mean(dim=(1, 2, 3), keepdim=True), tw.var(dim=(1, 2, 3), keepdim=True,
                                                               unbiased=False)
            w = (tw - m) / torch.sqrt(v + 1e-5)
        ty = torch.nn.functional.conv2d(tx, w, padding=1)
        ty.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(conv.params["weight"].grad, tw.grad.numpy(), rtol=1e-10,
                                   atol=1e-12)
    fc = td.Linear(6, 3, rng)
    xin = rng.normal(size=(5, 6))
    dy = rng.normal(size=(5, 3))
    fc.forward(xin)
    dx = fc.backward(dy)
    np.testing.assert_allclose(dx, dy @ fc.params["weight"].data)
    np.testing.assert_allclose(fc.params["bias"].grad, dy.sum(0))
    logits = rng.normal(size=(4, 10))
    labels = np.array([1, 0, 9, 3])
    loss, d = td.cross_entropy(logits, labels)
    tl = torch.from_numpy(logits).requires_grad_()
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(labels))
    tloss.backward()
    assert abs(loss - float(tloss.detach())) < 1e-14
    np.testing.assert_allclose(d, tl.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("decay,weight_decay", [("coupled", 5e-4), ("decoupled", 0.05)])
def test_torch_twin_losses_agree_in_float64(decay, weight_decay):
    pytest.importorskip("torch")
    import train_digits_torch as tt

    out = tt.twin_losses(steps=4, decay=decay, weight_decay=weight_decay)
    ours, theirs = np.asarray(out["normcore"]), np.asarray(out["torch"])
    assert len(ours) == 4
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    # and the weights after those steps, the normalization layers' included
    net, tnet = out["net"], out["torch_net"]
    tparams = dict(tnet.named_parameters())
    for name, tname in tt._NAMES.items():
        mod, attr = name.split(".")
        m = getattr(net, mod)
        ours_p = m.params[attr].data if isinstance(m, td.Layer) else getattr(m, attr).data
        np.testing.assert_allclose(ours_p, tparams[tname].detach().numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=name)
    np.testing.assert_allclose(net.bn.running_var, tnet.bn.running_var.numpy(), rtol=1e-9)


def test_a_short_run_learns():
    hist = td.train(epochs=30, max_steps=45, progress=False)
    loss = np.asarray(hist["step_loss"])
    assert len(loss) == 45 and len(hist["test_acc"]) == 2  # 23 steps an epoch
    assert loss[:5].mean() > 2.0          # chance: ln(10) = 2.3
    assert loss[-10:].mean() < 0.5 * loss[:5].mean()
    assert hist["test_acc"][-1] > 0.8


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    hist = {"step_loss": list(np.linspace(2.3, 0.1, 46)), "epoch_step": [23, 46],
            "test_loss": [0.5, 0.2], "test_acc": [0.9, 0.95], "train_acc": [0.8, 0.93],
            "seconds": 1.0}
    twin = {"normcore": [1.0, 0.5], "torch": [1.0, 0.5 + 1e-16]}
    path = tmp_path / "digits.png"
    td.plot(hist, str(path), twin)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
