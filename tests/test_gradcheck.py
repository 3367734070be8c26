"""Finite-difference gradient checks in float64: dx, dweight and dbias of every layer and
configuration, on every backend, through the functional API (forward + explicit backward)."""

from __future__ import annotations

import numpy as np
import pytest

import normcore
from normcore import functional as F

H = 1e-6


def _bn(training):
    def fwd(x, w, b, backend):
        c = x.shape[1]
        rm, rv = np.linspace(-0.5, 0.5, c), np.linspace(0.5, 2.0, c)
        return F.batch_norm(x, rm, rv, w, b, training=training, backend=backend)
    return fwd


def _in(use_input_stats):
    def fwd(x, w, b, backend):
        c = x.shape[1]
        return F.instance_norm(x, np.linspace(-0.5, 0.5, c), np.linspace(0.5, 2.0, c), w, b,
                               use_input_stats=use_input_stats, backend=backend)
    return fwd


CONFIGS = {
    # name: (forward(x, w, b, backend) -> (y, saved), backward, x shape, param shape, bias?)
    "batch_norm-train": (_bn(True), F.batch_norm_backward, (4, 3, 5), (3,), True),
    "batch_norm-train-2d": (_bn(True), F.batch_norm_backward, (5, 3), (3,), True),
    "batch_norm-train-noaffine": (_bn(True), F.batch_norm_backward, (3, 2, 2, 3), None, False),
    "batch_norm-eval": (_bn(False), F.batch_norm_backward, (3, 3, 4), (3,), True),
    "instance_norm": (_in(True), F.instance_norm_backward, (2, 3, 6), (3,), True),
    "instance_norm-noaffine": (_in(True), F.instance_norm_backward, (2, 2, 2, 3), None, False),
    "instance_norm-running": (_in(False), F.instance_norm_backward, (2, 3, 4), (3,), True),
    "layer_norm": (lambda x, w, b, be: F.layer_norm(x, (3, 4), w, b, backend=be),
                   F.layer_norm_backward, (2, 3, 4), (3, 4), True),
    "layer_norm-nobias": (lambda x, w, b, be: F.layer_norm(x, 5, w, None, eps=1e-3, backend=be),
                          F.layer_norm_backward, (4, 5), (5,), False),
    "layer_norm-noaffine": (lambda x, w, b, be: F.layer_norm(x, 6, backend=be),
                            F.layer_norm_backward, (3, 6), None, False),
    "group_norm": (lambda x, w, b, be: F.group_norm(x, 2, w, b, backend=be),
                   F.group_norm_backward, (2, 4, 3), (4,), True),
    "group_norm-2d": (lambda x, w, b, be: F.group_norm(x, 3, w, b, backend=be),
                      F.group_norm_backward, (2, 6, 2, 2), (6,), True),
    "group_norm-noaffine": (lambda x, w, b, be: F.group_norm(x, 1, backend=be),
                            F.group_norm_backward, (3, 4, 2), None, False),
    "rms_norm": (lambda x, w, b, be: F.rms_norm(x, 5, w, backend=be),
                 F.rms_norm_backward, (3, 5), (5,), False),
    "rms_norm-noaffine": (lambda x, w, b, be: F.rms_norm(x, (2, 3), eps=1e-4, backend=be),
                          F.rms_norm_backward, (2, 2, 3), None, False),
}


def _numeric(f, arr, r):
    grad = np.zeros_like(arr)
    for i in np.ndindex(arr.shape):
        old = arr[i]
        arr[i] = old + H
        plus = float((f() * r).sum())
        arr[i] = old - H
        minus = float((f() * r).sum())
        arr[i] = old
        grad[i] = (plus - minus) / (2 * H)
    return grad


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gradients_match_finite_differences(name, backend, rng):
    forward, backward, shape, pshape, has_bias = CONFIGS[name]
    x = rng.normal(0.3, 1.2, size=shape)
    w = rng.uniform(0.5, 1.5, size=pshape) if pshape else None
    b = rng.normal(size=pshape) if (pshape and has_bias) else None
    r = rng.normal(size=shape)

    def out():
        return normcore.to_numpy(forward(x, w, b, backend)[0])

    _, saved = forward(x, w, b, backend)
    dx, dw, db = backward(r, saved)
    np.testing.assert_allclose(normcore.to_numpy(dx), _numeric(out, x, r), rtol=1e-5, atol=1e-7)
    if w is not None:
        np.testing.assert_allclose(normcore.to_numpy(dw), _numeric(out, w, r), rtol=1e-5,
                                   atol=1e-7)
    else:
        assert dw is None
    if b is not None:
        np.testing.assert_allclose(normcore.to_numpy(db), _numeric(out, b, r), rtol=1e-5,
                                   atol=1e-7)
    else:
        assert db is None


@pytest.mark.parametrize("unbiased,eps_in_root", [(False, True), (True, False), (True, True),
                                                  (False, False)])
def test_weight_standardization_gradient(unbiased, eps_in_root, backend, rng):
    w = rng.normal(0.2, 1.0, size=(3, 2, 3))
    r = rng.normal(size=w.shape)

    def out():
        return normcore.to_numpy(F.weight_standardization(
            w, 1e-5, unbiased=unbiased, eps_in_root=eps_in_root, backend=backend)[0])

    _, saved = F.weight_standardization(w, 1e-5, unbiased=unbiased, eps_in_root=eps_in_root,
                                        backend=backend)
    dx = F.weight_standardization_backward(r, saved)
    np.testing.assert_allclose(normcore.to_numpy(dx), _numeric(out, w, r), rtol=1e-5, atol=1e-7)


def test_dropout_gradient_is_the_same_mask(backend, rng):
    x = rng.normal(size=(4, 7))
    r = rng.normal(size=x.shape)
    y, saved = F.dropout(x, 0.3, seed=99, backend=backend)
    dx = F.dropout_backward(r, saved)

    def out():
        return normcore.to_numpy(F.dropout(x, 0.3, seed=99, backend=backend)[0])

    np.testing.assert_allclose(normcore.to_numpy(dx), _numeric(out, x, r), rtol=1e-6, atol=1e-8)
