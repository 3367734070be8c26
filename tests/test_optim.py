"""normcore.optim against torch.optim (2.13), step by step: float64, 50 steps of random
gradients, every option combination torch supports; parameters and state equal to 1e-12
relative. Also parameter groups, zero_grad, state_dict round trips both ways, argument errors,
and the decay / no-decay split."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import normcore
from normcore.optim import SGD, Adam, AdamW, param_groups

torch = pytest.importorskip("torch")

RTOL = 1e-12
SHAPES = [(5, 3), (4,), (2, 2, 3)]
STEPS = 50


def _close(ours, theirs, what: str) -> None:
    """Equal to RTOL relative to the array's scale: max|ours - theirs| <= RTOL * max|theirs|.

    (Not element by element: torch's CPU kernels fuse ``a + alpha * b``, ``lerp`` and
    ``addcmul`` into FMA instructions, NumPy rounds the product first, so an element that cancels
    to near zero differs by an ulp of its operands, e.g. 1e-16 on a value of 5e-5.)"""
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, what
    scale = float(np.max(np.abs(theirs), initial=0.0))
    err = float(np.max(np.abs(ours - theirs), initial=0.0))
    assert err <= RTOL * scale, f"{what}: max error {err:.3g} > {RTOL} x scale {scale:.3g}"


def _pair(seed: int = 0, shapes=SHAPES, dtype=np.float64):
    rng = np.random.default_rng(seed)
    init = [rng.normal(size=s).astype(dtype) for s in shapes]
    ours = [normcore.Parameter(w.copy()) for w in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in init]
    return ours, theirs


def _set_grads(ours, theirs, rng, step: int) -> None:
    for i, (p, q) in enumerate(zip(ours, theirs, strict=True)):
        if i == 2 and step % 3 == 1:  # a parameter without a gradient is skipped (no state)
            p.grad, q.grad = None, None
            continue
        g = rng.normal(size=p.shape) * (1 + i)
        p.grad, q.grad = g.copy(), torch.from_numpy(g.copy())


def _compare(opt, topt, ours, theirs, step: int) -> None:
    for i, (p, q) in enumerate(zip(ours, theirs, strict=True)):
        _close(p.data, q, f"param {i} after step {step}")
        s, ts = opt.state.get(p, {}), topt.state.get(q, {})
        assert sorted(s) == sorted(ts), (step, i, sorted(s), sorted(ts))
        for k in s:
            _close(s[k], ts[k], f"state {k} of param {i} after step {step}")


def _run(make, kwargs: dict, steps: int = STEPS, seed: int = 0) -> None:
    ours, theirs = _pair(seed)
    opt = make[0](ours, **kwargs)
    topt = make[1](theirs, **kwargs)
    rng = np.random.default_rng(seed + 1)
    for step in range(steps):
        _set_grads(ours, theirs, rng, step)
        opt.step()
        topt.step()
        _compare(opt, topt, ours, theirs, step)


SGD_CASES = [
    dict(lr=0.05, momentum=m, dampening=d, weight_decay=wd, nesterov=n, maximize=mx)
    for m, d, wd, n, mx in itertools.product([0, 0.9], [0, 0.1], [0, 0.01], [False, True],
                                             [False, True])
    if not n or (m > 0 and d == 0)
]


@pytest.mark.parametrize("kwargs", SGD_CASES, ids=lambda k: "-".join(f"{v}" for v in k.values()))
def test_sgd_matches_torch(kwargs):
    _run((SGD, torch.optim.SGD), kwargs)


ADAM_CASES = [
    dict(lr=0.01, weight_decay=wd, amsgrad=a, maximize=mx, decoupled_weight_decay=dec)
    for wd, a, mx, dec in itertools.product([0, 0.1], [False, True], [False, True], [False, True])
]


@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=lambda k: "-".join(f"{v}" for v in k.values()))
def test_adam_matches_torch(kwargs):
    _run((Adam, torch.optim.Adam), kwargs)


ADAMW_CASES = [
    dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, amsgrad=a, maximize=mx)
    for wd, a, mx in itertools.product([0, 0.05], [False, True], [False, True])
] + [{}]  # torch's defaults


@pytest.mark.parametrize("kwargs", ADAMW_CASES, ids=lambda k: "-".join(f"{v}" for v in k.values()))
def test_adamw_matches_torch(kwargs):
    _run((AdamW, torch.optim.AdamW), kwargs)


def test_defaults_are_torchs():
    ours, theirs = _pair()
    for cls, tcls in [(SGD, torch.optim.SGD), (Adam, torch.optim.Adam),
                      (AdamW, torch.optim.AdamW)]:
        a, b = cls(ours).state_dict(), tcls(theirs).state_dict()
        assert a == b, cls  # the same group keys, order and default values
        assert list(a["param_groups"][0]) == list(b["param_groups"][0])


def test_float32_parameters_stay_float32():
    ours, theirs = _pair(shapes=[(6,)], dtype=np.float32)
    opt, topt = Adam(ours, lr=0.1, amsgrad=True), torch.optim.Adam(theirs, lr=0.1, amsgrad=True)
    rng = np.random.default_rng(3)
    for _ in range(10):
        g = rng.normal(size=6).astype(np.float32)
        ours[0].grad, theirs[0].grad = g, torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    assert ours[0].data.dtype == np.float32
    assert all(v.dtype == np.float32 for v in opt.state[ours[0]].values())
    np.testing.assert_allclose(ours[0].data, theirs[0].detach().numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- parameter groups
@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_per_group_options(cls):
    ours, theirs = _pair(4)
    opts = {
        "SGD": [dict(lr=0.1, momentum=0.9, nesterov=True), dict(weight_decay=0.1, dampening=0.5),
                dict(maximize=True)],
        "Adam": [dict(lr=0.1, amsgrad=True), dict(betas=(0.5, 0.9), weight_decay=0.1),
                 dict(decoupled_weight_decay=True, weight_decay=0.2, eps=1e-3)],
        "AdamW": [dict(lr=0.1), dict(weight_decay=0.0, maximize=True), dict(amsgrad=True)],
    }[cls]
    defaults = dict(lr=0.01, momentum=0.5) if cls == "SGD" else dict(lr=0.01)
    opt = getattr(normcore.optim, cls)(
        [{"params": [p], **o} for p, o in zip(ours, opts, strict=True)], **defaults)
    topt = getattr(torch.optim, cls)(
        [{"params": [p], **o} for p, o in zip(theirs, opts, strict=True)], **defaults)
    assert opt.state_dict()["param_groups"] == topt.state_dict()["param_groups"]
    rng = np.random.default_rng(5)
    for step in range(STEPS):
        _set_grads(ours, theirs, rng, step)
        opt.step()
        topt.step()
        _compare(opt, topt, ours, theirs, step)


def test_named_parameters_and_add_param_group():
    ours, theirs = _pair()
    opt = SGD([("a", ours[0]), ("b", ours[1])], lr=0.1)
    topt = torch.optim.SGD([("a", theirs[0]), ("b", theirs[1])], lr=0.1)
    opt.add_param_group({"params": [("c", ours[2])], "lr": 0.5})
    topt.add_param_group({"params": [("c", theirs[2])], "lr": 0.5})
    assert opt.state_dict() == topt.state_dict()
    assert opt.param_groups[0]["param_names"] == ["a", "b"]
    with pytest.raises(ValueError, match="should be with/without names"):
        opt.add_param_group({"params": [normcore.Parameter(np.zeros(1))]})


def test_zero_grad():
    ours, _ = _pair()
    opt = SGD(ours, lr=0.1)
    for p in ours:
        p.grad = np.ones(p.shape)
    grads = [p.grad for p in ours]
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(ours, grads, strict=True))
    opt.zero_grad()
    assert all(p.grad is None for p in ours)
    opt.step()  # no gradients: nothing moves, no state
    assert not opt.state


def test_updates_in_place_on_the_same_parameters():
    ln = normcore.LayerNorm(4, dtype=np.float64)
    weight, data = ln.weight, ln.weight.data
    opt = SGD(ln.parameters(), lr=0.5)
    y = ln(np.random.default_rng(0).normal(size=(3, 4)))
    ln.backward(np.ones_like(y))
    opt.step()
    assert ln.weight is weight and ln.weight.data is data
    np.testing.assert_array_equal(ln.bias.data, -0.5 * 3 * np.ones(4))


# ---------------------------------------------------------------------- state_dict both ways
def _to_torch(sd):
    return {"state": {i: {k: torch.as_tensor(v) for k, v in s.items()}
                      for i, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}


@pytest.mark.parametrize("cls,kwargs", [
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, maximize=True)),
])
@pytest.mark.parametrize("direction", ["torch->normcore", "normcore->torch"])
def test_state_dict_round_trip(cls, kwargs, direction):
    ours, theirs = _pair(7)
    ocls, tcls = getattr(normcore.optim, cls), getattr(torch.optim, cls)
    opt, topt = ocls(ours, **kwargs), tcls(theirs, **kwargs)
    rng = np.random.default_rng(8)
    for step in range(20):
        _set_grads(ours, theirs, rng, step)
        opt.step()
        topt.step()
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert sd["param_groups"] == tsd["param_groups"]
    assert sd["state"].keys() == tsd["state"].keys()
    for i in sd["state"]:
        for k, v in sd["state"][i].items():
            t = tsd["state"][i][k]
            assert isinstance(v, np.ndarray) and v.dtype == t.numpy().dtype and v.shape == t.shape
            _close(v, t, f"{k} of {i}")
    # a fresh optimizer on the same parameter values continues from the loaded state
    if direction == "torch->normcore":
        fresh = [normcore.Parameter(q.detach().numpy().copy()) for q in theirs]
        new = ocls(fresh, lr=1.0)  # the groups' options come from the state dict
        new.load_state_dict(tsd)   # torch's tensors, as torch saved them
        a, b, other = new, topt, (fresh, theirs)
    else:
        fresh = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in ours]
        new = tcls(fresh, lr=1.0)
        new.load_state_dict(_to_torch(sd))
        a, b, other = opt, new, (ours, fresh)
    assert a.state_dict()["param_groups"] == b.state_dict()["param_groups"]
    for step in range(20, 40):
        _set_grads(*other, rng, step)
        a.step()
        b.step()
        _compare(a, b, *other, step)


def test_state_dict_is_a_copy_and_loads_into_itself():
    ours, _ = _pair()
    opt = Adam(ours, lr=0.1)
    for p in ours:
        p.grad = np.ones(p.shape)
    opt.step()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"][...] = 123.0
    assert not (opt.state[ours[0]]["exp_avg"] == 123.0).any()
    opt2 = Adam(ours, lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[ours[0]]["step"].dtype == np.float32
    assert float(opt2.state[ours[0]]["step"]) == 1.0


def test_load_state_dict_errors_match_torch():
    ours, theirs = _pair()
    opt, topt = SGD(ours[:2]), torch.optim.SGD(theirs[:2])
    for sd_groups in ([{"params": [0]}, {"params": [1]}], [{"params": [0]}]):
        sd = {"state": {}, "param_groups": sd_groups}
        with pytest.raises(ValueError) as e1:
            opt.load_state_dict(sd)
        with pytest.raises(ValueError) as e2:
            topt.load_state_dict(sd)
        assert str(e1.value) == str(e2.value)


# ---------------------------------------------------------------------- argument errors
ERROR_CASES = [
    ("SGD", dict(lr=-1)), ("SGD", dict(lr=0.1, momentum=-0.5)),
    ("SGD", dict(lr=0.1, weight_decay=-1e-3)), ("SGD", dict(lr=0.1, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)),
    ("Adam", dict(lr=-0.5)), ("Adam", dict(eps=-1e-8)), ("Adam", dict(betas=(1.0, 0.999))),
    ("Adam", dict(betas=(0.9, -0.1))), ("Adam", dict(weight_decay=-1)),
    ("Adam", dict(betas=(0, 0.999))), ("AdamW", dict(lr=-1e-3)),
    ("AdamW", dict(betas=(0.9, 1.5))), ("AdamW", dict(weight_decay=-0.1)),
]


@pytest.mark.parametrize("cls,kwargs", ERROR_CASES)
def test_argument_errors_match_torch(cls, kwargs):
    ours, theirs = _pair()
    with pytest.raises(ValueError) as theirs_err:
        getattr(torch.optim, cls)(theirs, **kwargs)
    with pytest.raises(ValueError) as ours_err:
        getattr(normcore.optim, cls)(ours, **kwargs)
    assert str(ours_err.value) == str(theirs_err.value)


def test_params_errors_match_torch():
    ours, theirs = _pair()
    cases = [([], []), ([{"params": ours[:1]}, {"params": ours[:1]}],
                        [{"params": theirs[:1]}, {"params": theirs[:1]}])]
    for o, t in cases:
        with pytest.raises(ValueError) as e1:
            SGD(o)
        with pytest.raises(ValueError) as e2:
            torch.optim.SGD(t)
        assert str(e1.value) == str(e2.value)
    with pytest.raises(TypeError, match="ordered collections"):
        SGD([{"params": set(ours)}])
    with pytest.raises(TypeError, match="iterable of Parameters or dicts"):
        SGD(ours[0])
    with pytest.raises(TypeError, match="can only optimize Parameters, but one of the params is "
                                        "numpy.ndarray"):
        SGD([np.zeros(3)])
    with pytest.raises(TypeError, match="param_group must be a dict"):
        SGD(ours[:1]).add_param_group(ours[1])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        SGD([ours[0], ours[0]])
    assert "duplicate parameters" in str(w[0].message)


@pytest.mark.parametrize("cls,flag", [("SGD", "foreach"), ("SGD", "fused"),
                                      ("SGD", "differentiable"), ("Adam", "capturable"),
                                      ("Adam", "foreach"), ("AdamW", "fused"),
                                      ("AdamW", "differentiable")])
def test_unsupported_implementations_raise(cls, flag):
    ours, _ = _pair()
    with pytest.raises(NotImplementedError, match=f"only {flag}=None/False"):
        getattr(normcore.optim, cls)(ours, **{flag: True})
    opt = getattr(normcore.optim, cls)(ours)  # the default values are accepted ...
    opt.param_groups[0][flag] = True          # ... and a group that asks for more is refused
    with pytest.raises(NotImplementedError):
        opt.step()


def test_tensor_lr_is_refused():
    ours, _ = _pair()
    with pytest.raises(TypeError, match="no tensor lr"):
        SGD(ours, lr=np.array(0.1))


# ---------------------------------------------------------------------- other array libraries
def test_parameters_of_other_array_libraries():
    """Updates run on the Parameters' own arrays: torch tensors (array-api-torch) in place, and
    immutable JAX arrays (array-api-jax) by rebinding, give NumPy's result (float32: JAX's
    default precision, left as it is)."""
    ref, _ = _pair(shapes=[(3, 2)], dtype=np.float32)
    g = np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32)
    libs = [torch.from_numpy]
    try:
        import jax.numpy as jnp

        libs.append(jnp.asarray)
    except ImportError:
        pass
    arrays = [lib(ref[0].data.copy()) for lib in libs]
    ref_opt = Adam(ref, lr=0.1, amsgrad=True, weight_decay=0.1)
    params = [normcore.Parameter(a) for a in arrays]
    opts = [Adam([p], lr=0.1, amsgrad=True, weight_decay=0.1) for p in params]
    for _ in range(5):
        ref[0].grad = g.copy()
        ref_opt.step()
        for p, o, lib in zip(params, opts, libs, strict=True):
            p.grad = lib(g.copy())
            o.step()
    assert params[0].data is arrays[0]  # torch: updated in place
    for p, a in zip(params, arrays, strict=True):
        assert type(p.data) is type(a) and p.data.dtype == a.dtype
        np.testing.assert_allclose(normcore.to_numpy(p.data), ref[0].data, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- decay / no-decay
def test_param_groups_split():
    class Conv(normcore.Module):
        def __init__(self):
            super().__init__(dtype=np.float64)
            self._param("weight", (4, 2, 3, 3), 0.1)
            self._param("bias", (4,), 0.0)

    conv, gn, bn = Conv(), normcore.GroupNorm(2, 4, dtype=np.float64), \
        normcore.BatchNorm2d(4, dtype=np.float64)
    groups = param_groups([("conv", conv), ("gn", gn), ("bn", bn)], 5e-4, lr=0.1,
                          with_names=True)
    assert [n for n, _ in groups[0]["params"]] == ["conv.weight"]
    assert [n for n, _ in groups[1]["params"]] == ["conv.bias", "gn.weight", "gn.bias",
                                                   "bn.weight", "bn.bias"]
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (5e-4, 0.0)
    assert groups[0]["lr"] == groups[1]["lr"] == 0.1
    opt = SGD(groups, momentum=0.9)
    assert opt.param_groups[1]["param_names"][0] == "conv.bias"


def test_param_groups_on_a_torch_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 2, bias=False))
    decay, no_decay = param_groups(model, 0.1, with_names=True)
    assert [n for n, _ in decay["params"]] == ["0.weight", "5.weight"]
    assert [n for n, _ in no_decay["params"]] == ["0.bias", "1.weight", "1.bias", "4.weight",
                                                  "4.bias"]
    torch.optim.SGD([decay, no_decay], lr=0.1)  # torch takes the groups as they are
