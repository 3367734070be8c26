"""The per-call fast path (normcore/_fast.py) against the general path it stands for.

A layer that has run once on an input's (shape, dtype) keeps a plan for it; a deep copy keeps
none, so ``copy.deepcopy(layer)(x)`` takes the general path. Each test changes something the
plans must notice (a parameter written in place or replaced, eps, momentum, training, the
backend, the running statistics) and checks that the fast call gives what the general one gives:
output, saved context, running statistics, gradients, and the same errors.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading

import numpy as np
import pytest

import normcore
from normcore import _fast
from normcore._parameter import Parameter

BACKENDS = ["numpy"] + (["numba"] if normcore.get_backend("numba").is_available() else [])


def _layers(backend: str) -> list[tuple[str, normcore.Module, tuple[int, ...]]]:
    return [
        ("ln", normcore.LayerNorm(8, backend=backend), (3, 8)),
        ("ln2", normcore.LayerNorm((2, 4), bias=False, backend=backend), (3, 2, 4)),
        ("rms", normcore.RMSNorm(8, backend=backend), (3, 8)),
        ("rms-eps", normcore.RMSNorm(8, eps=1e-3, backend=backend), (2, 5, 8)),
        ("gn", normcore.GroupNorm(2, 4, backend=backend), (2, 4, 3)),
        ("bn1", normcore.BatchNorm1d(4, backend=backend), (5, 4)),
        ("bn1-cma", normcore.BatchNorm1d(4, momentum=None, backend=backend), (5, 4, 3)),
        ("bn1-nostats", normcore.BatchNorm1d(4, track_running_stats=False, backend=backend),
         (5, 4)),
        ("bn2-eval", normcore.BatchNorm2d(4, backend=backend).eval(), (2, 4, 3, 3)),
        ("in1", normcore.InstanceNorm1d(4, backend=backend), (2, 4, 5)),
        ("in1-unbatched", normcore.InstanceNorm1d(4, affine=True, backend=backend), (4, 5)),
        ("in2-track", normcore.InstanceNorm2d(4, track_running_stats=True, affine=True,
                                              backend=backend), (2, 4, 3, 3)),
    ]


def _cases() -> list[tuple[str, str]]:
    return [(b, name) for b in BACKENDS for name, _, _ in _layers(b)]


def _make(backend: str, name: str) -> tuple[normcore.Module, np.ndarray]:
    layer, shape = next((m, s) for n, m, s in _layers(backend) if n == name)
    rng = np.random.default_rng(0)
    for _, p in layer.named_parameters():  # parameters that are not ones and zeros
        p.data = layer.backend.asarray(rng.normal(size=p.shape).astype(np.float32))
    return layer, rng.normal(size=shape).astype(np.float32)


def _arrays_equal(a, b, what: str) -> None:
    if a is None or b is None:
        assert a is None and b is None, what
        return
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what)


def _saved_equal(a, b) -> None:
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if f.name in ("x", "mean", "var", "weight"):
            _arrays_equal(va, vb, f"saved.{f.name}")
            if va is not None:
                assert np.shape(va) == np.shape(vb), f.name
        elif f.name == "running":
            assert (va is None) == (vb is None)
            if va is not None:
                _arrays_equal(va.mean, vb.mean, "running.mean")
                _arrays_equal(va.var, vb.var, "running.var")
        else:
            assert va == vb, f.name


def _has_plan(layer: normcore.Module, x: np.ndarray) -> bool:
    plan = layer._fast.get((x.shape, x.dtype))
    return plan is not None and plan is not _fast._miss


def check_same(layer: normcore.Module, x: np.ndarray, expect_plan: bool = True) -> None:
    """``layer(x)`` (the fast path) against a copy's (the general path), then the backward."""
    if expect_plan:
        assert _has_plan(layer, x)
    twin = copy.deepcopy(layer)
    assert not twin._fast
    y_fast, y_slow = layer(x), twin(x)
    _arrays_equal(y_fast, y_slow, "output")
    assert np.shape(y_fast) == np.shape(y_slow)
    _saved_equal(layer._saved, twin._saved)
    for (k, a), (_, b) in zip(layer.named_buffers(), twin.named_buffers(), strict=True):
        _arrays_equal(a, b, k)
        assert np.asarray(a).dtype == np.asarray(b).dtype, k
    dy = np.linspace(-1, 1, x.size, dtype=x.dtype).reshape(x.shape)
    _arrays_equal(layer.backward(dy), twin.backward(dy), "grad_input")
    for (k, p), (_, q) in zip(layer.named_parameters(), twin.named_parameters(), strict=True):
        _arrays_equal(p.grad, q.grad, f"{k}.grad")
    layer.zero_grad()


@pytest.mark.parametrize(("backend", "name"), _cases())
def test_fast_path_equals_general_path(backend, name):
    layer, x = _make(backend, name)
    layer(x)  # builds the plan
    for _ in range(2):
        check_same(layer, x)
    # another array of the same shape and dtype, and a non-contiguous one
    check_same(layer, x[::-1].copy())
    wide = np.concatenate([x, x], axis=-1)[..., ::2]
    check_same(layer, wide)


@pytest.mark.parametrize(("backend", "name"), _cases())
def test_parameter_written_in_place_or_replaced(backend, name):
    layer, x = _make(backend, name)
    layer(x)
    params = dict(layer.named_parameters())
    if not params:
        pytest.skip("no parameters")
    for p in params.values():
        p.data[...] = p.data * 2 + 0.5  # in place: the plan's views see it
    check_same(layer, x)
    for p in params.values():
        p.data = layer.backend.asarray(np.full(p.shape, 3.0, np.float32))  # p.data replaced
    check_same(layer, x)
    for k in params:  # the Parameter itself replaced (an attribute: the plans go)
        setattr(layer, k, Parameter(layer.backend.asarray(np.full(params[k].shape, -1.0,
                                                                   np.float32))))
    layer(x)
    check_same(layer, x)
    for k in params:  # a Parameter swapped in the dict behind the attribute
        layer._params[k] = Parameter(layer.backend.asarray(np.full(params[k].shape, 0.25,
                                                                    np.float32)))
    check_same(layer, x)
    for k in params:
        setattr(layer, k, None)
    layer(x)
    check_same(layer, x)


@pytest.mark.parametrize(("backend", "name"), _cases())
def test_attribute_changes_empty_the_plans(backend, name):
    layer, x = _make(backend, name)
    layer(x)
    assert _has_plan(layer, x)
    layer.eps = 0.25
    assert not layer._fast
    layer(x)
    check_same(layer, x)
    if hasattr(layer, "momentum"):
        layer.momentum = 0.5 if layer.momentum is not None else None
        layer(x)
        check_same(layer, x)
    layer.eval()
    layer(x)
    check_same(layer, x)
    layer.train()
    layer(x)
    check_same(layer, x)


@pytest.mark.parametrize(("backend", "name"), _cases())
def test_backend_switch(backend, name):
    layer, x = _make(backend, name)
    layer(x)
    other = "numpy" if backend != "numpy" else BACKENDS[-1]
    layer.to(other)
    assert not layer._fast and layer.backend.name == other
    layer(x)
    check_same(layer, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_statistics_replaced_or_loaded(backend):
    bn, x = _make(backend, "bn1")
    bn(x)
    bn.load_state_dict({"running_mean": np.full(4, 0.5), "running_var": np.full(4, 2.0),
                        "num_batches_tracked": np.array(7)}, strict=False)
    check_same(bn, x)
    assert int(bn.num_batches_tracked) == 8
    bn.eval()
    bn(x)
    bn._buffers["running_mean"] = bn.running_mean.astype(np.float64)  # behind the attribute
    with pytest.raises(TypeError, match="running_mean"):
        bn(x)
    bn._buffers["running_mean"] = None
    with pytest.raises(ValueError, match="both be given"):
        bn(x)
    bn._buffers["running_var"] = None
    check_same(bn, x)  # no statistics: batch statistics, as the general path does


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_unchanged_with_a_plan(backend):
    ln, x = _make(backend, "ln")
    ln(x)
    with pytest.raises(TypeError, match="does not cast silently"):
        ln(x.astype(np.int32))
    with pytest.raises(ValueError, match="normalized_shape"):
        ln(np.ones((3, 7), np.float32))
    with pytest.raises(TypeError, match="MaskedArray"):
        ln(np.ma.masked_array(x))
    ln.weight.data = ln.weight.data.astype(np.float64)  # a dtype the input does not have
    with pytest.raises(TypeError, match="weight dtype float64"):
        ln(x)
    ln.weight.data = np.ones(8, np.float32)
    with pytest.raises(RuntimeError, match="backward"):
        ln(x)
        ln.backward(np.ones_like(x))
        ln.backward(np.ones_like(x))
    ln(x)
    with pytest.raises(ValueError, match="grad_output must have"):
        ln.backward(np.ones((2, 8), np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_training_forward_leaves_the_statistics(backend, monkeypatch):
    bn, x = _make(backend, "bn1")
    bn(x)
    before = {k: np.array(v) for k, v in bn.named_buffers()}
    be = bn.backend

    def boom(*args):
        raise MemoryError("kernel failed")

    for kernel in ("channel_moments_normalize_update", "channel_moments_normalize",
                   "channel_moments"):  # (whichever this backend runs)
        monkeypatch.setattr(be, kernel, boom)
    with pytest.raises(MemoryError):
        bn(x)
    monkeypatch.undo()
    for k, v in bn.named_buffers():
        np.testing.assert_array_equal(np.asarray(v), before[k])
    check_same(bn, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_keep_their_own_saved_context(backend):
    ln, _ = _make(backend, "ln")
    xs = [np.random.default_rng(i).normal(size=(3, 8)).astype(np.float32) for i in range(4)]
    ln(xs[0])
    ref = []
    for x in xs:
        twin = copy.deepcopy(ln)
        twin(x)
        ref.append(twin.backward(np.ones_like(x)))
    got: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(50):
            ln(xs[i])
            got[i] = ln.backward(np.ones_like(xs[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_array_equal(got[i], ref[i])


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_training_forwards_lose_no_update(backend):
    bn, x = _make(backend, "bn1")
    bn(x)
    threads = [threading.Thread(target=lambda: [bn(x) for _ in range(25)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(bn.num_batches_tracked) == 101


def test_subclass_overriding_forward_gets_no_plan():
    class Doubled(normcore.LayerNorm):
        def forward(self, input):
            return super().forward(input) * 2

    layer = Doubled(4, backend="numpy")
    x = np.ones((2, 4), np.float32)
    layer(x)
    layer(x)
    assert layer._fast.get((x.shape, x.dtype)) is _fast._miss


def test_warning_and_eps_zero_cases_stay_on_the_general_path():
    inst = normcore.InstanceNorm1d(3, backend="numpy")
    x = np.random.default_rng(0).normal(size=(2, 4, 5)).astype(np.float32)
    with pytest.warns(UserWarning, match="num_features"):
        inst(x)
    with pytest.warns(UserWarning, match="num_features"):
        inst(x)  # warns every call
    zero = normcore.InstanceNorm1d(4, eps=0.0, backend="numpy")
    zero(x)
    assert not _has_plan(zero, x)
    check_same(zero, x, expect_plan=False)


def test_debug_logging_takes_the_general_path(caplog):
    ln = normcore.LayerNorm(4, backend="numpy")
    x = np.ones((2, 4), np.float32)
    ln(x)
    with caplog.at_level(logging.DEBUG, logger="normcore"):
        ln(x)
    assert any("ran on backend" in r.getMessage() for r in caplog.records)


def test_copies_and_pickles_start_without_plans():
    import pickle

    ln = normcore.LayerNorm(4, backend="numpy")
    x = np.ones((2, 4), np.float32)
    ln(x)
    assert ln._fast
    for other in (copy.deepcopy(ln), copy.copy(ln), pickle.loads(pickle.dumps(ln))):
        assert other._fast == {} and other._fast is not ln._fast
        np.testing.assert_array_equal(other(x), ln(x))
