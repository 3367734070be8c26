"""normcore.torch, the PyTorch bridge: autograd Functions, drop-in modules and convert().

Every drop-in against torch's own layer (forward, input and parameter gradients, running
statistics, eval, state_dict), gradcheck in float64, no_grad/inference_mode, channels-last and
non-contiguous input, double backward, torch.compile, and converted models nobody here wrote:
transformers' ResNetModel and BertModel and torch's TransformerEncoderLayer.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")

import normcore.torch as nt  # noqa: E402

nn = torch.nn
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS,
                                        reason="transformers is not installed (make setup installs it)")


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """max |a - b| / max(max |b|, floor): the normwise relative error. ``floor`` is the scale of
    the computation for a tensor that is zero in exact arithmetic (a conv bias before BatchNorm,
    attention's key bias), whose computed values are rounding noise."""
    a, b = a.detach().double(), b.detach().double()
    scale = max(b.abs().max().item() if b.numel() else 0.0, floor)
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    return diff / scale if scale else diff


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float64,
          floor: float = 0.0) -> None:
    assert a.shape == b.shape
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    assert rel_err(a, b, floor) <= tol, (rel_err(a, b, floor), tol)


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Weights and biases away from ones and zeros, so their gradients matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)


# ---------------------------------------------------------------------- import hygiene
def test_import_normcore_does_not_import_torch():
    code = "import sys, normcore, normcore.functional; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_drop_ins_are_torch_modules_with_torch_constructors():
    import inspect
    for torch_cls, cls in nt.DROP_INS.items():
        assert issubclass(cls, torch_cls) and cls is not torch_cls
        want = list(inspect.signature(torch_cls).parameters) + ["backend"]
        assert list(inspect.signature(cls).parameters) == want
    bn = nt.BatchNorm2d(3, 1e-3, None, True, True, None, torch.float64, bias=False, backend="numpy")
    assert bn.bias is None and bn.momentum is None and bn.weight.dtype == torch.float64
    assert isinstance(bn.weight, nn.Parameter) and bn.backend == "numpy"
    assert "backend='numpy'" in repr(bn)
    with pytest.raises(Exception, match="no-such-backend"):
        nt.LayerNorm(4, backend="no-such-backend")


# ---------------------------------------------------------------------- gradcheck (float64)
def _gc_inputs(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(s, generator=g, dtype=torch.float64) + 0.3).requires_grad_()
                 for s in shapes)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_gradcheck_every_function(backend):
    gc = torch.autograd.gradcheck
    x, w, b = _gc_inputs((4, 3, 5), (3,), (3,))
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert gc(lambda x, w, b: nt.batch_norm(x, None, None, w, b, True, backend=backend), (x, w, b))
    assert gc(lambda x, w, b: nt.batch_norm(x, rm, rv, w, b, True, backend=backend), (x, w, b))
    assert gc(lambda x, w, b: nt.batch_norm(x, rm + 0.1, rv + 0.5, w, b, False, backend=backend),
              (x, w, b))
    assert gc(lambda x, w, b: nt.instance_norm(x, rm.clone(), rv.clone(), w, b, True,
                                               backend=backend), (x, w, b))
    assert gc(lambda x, w, b: nt.instance_norm(x, rm + 0.1, rv + 0.5, w, b, False,
                                               backend=backend), (x, w, b))
    x2, w2, b2 = _gc_inputs((2, 3, 4, 5), (4, 5), (4, 5), seed=1)
    assert gc(lambda x, w, b: nt.layer_norm(x, (4, 5), w, b, backend=backend), (x2, w2, b2))
    assert gc(lambda x, w: nt.rms_norm(x, (4, 5), w, 1e-6, backend=backend), (x2, w2))
    x3, w3, b3 = _gc_inputs((2, 6, 3, 2), (6,), (6,), seed=2)
    assert gc(lambda x, w, b: nt.group_norm(x, 3, w, b, backend=backend), (x3, w3, b3))
    x4, = _gc_inputs((3, 4, 2, 3), seed=3)  # channels-last, no affine
    x4 = x4.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert gc(lambda x: nt.batch_norm(x, None, None, training=True, backend=backend), (x4,))
    assert gc(lambda x: nt.group_norm(x, 2, backend=backend), (x4,))


# ---------------------------------------------------------------------- drop-in vs torch
LAYERS = [
    (nn.BatchNorm1d, (5,), {}, (8, 5)),
    (nn.BatchNorm1d, (5,), {"momentum": None}, (4, 5, 7)),
    (nn.BatchNorm1d, (5,), {"affine": False}, (4, 5, 3)),
    (nn.BatchNorm1d, (5,), {"track_running_stats": False, "bias": False}, (6, 5)),
    (nn.BatchNorm2d, (4,), {"eps": 1e-3, "momentum": 0.3}, (3, 4, 5, 6)),
    (nn.BatchNorm3d, (3,), {}, (2, 3, 3, 4, 5)),
    (nn.InstanceNorm1d, (5,), {"affine": True, "track_running_stats": True}, (3, 5, 7)),
    (nn.InstanceNorm1d, (5,), {"affine": True}, (5, 7)),  # unbatched
    (nn.InstanceNorm2d, (4,), {"affine": True, "momentum": None, "track_running_stats": True},
     (2, 4, 5, 6)),
    (nn.InstanceNorm3d, (3,), {}, (2, 3, 3, 4, 5)),
    (nn.LayerNorm, ((5, 6),), {}, (3, 4, 5, 6)),
    (nn.LayerNorm, (6,), {"bias": False, "eps": 1e-6}, (7, 6)),
    (nn.LayerNorm, (6,), {"elementwise_affine": False}, (2, 3, 6)),
    (nn.GroupNorm, (2, 4), {}, (3, 4, 5, 6)),
    (nn.GroupNorm, (3, 6), {"affine": False}, (2, 6, 7)),
    (nn.RMSNorm, (6,), {}, (4, 3, 6)),
    (nn.RMSNorm, ((5, 6),), {"eps": 1e-6}, (3, 5, 6)),
    (nn.RMSNorm, (6,), {"elementwise_affine": False}, (4, 6)),
]
LAYER_IDS = [f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-{len(s)}d"
             for c, _, kw, s in LAYERS]


def _pair(torch_cls, args, kwargs, dtype, backend=None):
    ref = torch_cls(*args, **kwargs, dtype=dtype)
    randomize(ref)
    ours = nt.DROP_INS[torch_cls](*args, **kwargs, dtype=dtype, backend=backend)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _step(layer, x, gy):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.backward(gy)
    return y, x.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("torch_cls", "args", "kwargs", "shape"), LAYERS, ids=LAYER_IDS)
def test_drop_in_equals_torch(torch_cls, args, kwargs, shape, dtype):
    ref, ours = _pair(torch_cls, args, kwargs, dtype)
    assert type(ours) is not torch_cls and isinstance(ours, torch_cls)
    assert list(ours.state_dict()) == list(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    for step in range(3):  # training: batch statistics, running statistics, gradients accumulate
        x = torch.randn(shape, generator=g, dtype=dtype) * 2 + 0.5
        gy = torch.randn(shape, generator=g, dtype=dtype)
        (y0, dx0), (y1, dx1) = _step(ref, x, gy), _step(ours, x, gy)
        close(y1, y0, dtype)
        close(dx1, dx0, dtype)
        assert y1.dtype == dtype and dx1.dtype == dtype
        for p0, p1 in zip(ref.parameters(), ours.parameters(), strict=True):
            close(p1.grad, p0.grad, dtype)
        for (name, b0), b1 in zip(ref.named_buffers(), ours.buffers(), strict=True):
            assert b1.dtype == b0.dtype, name
            if b0.is_floating_point():
                close(b1, b0, dtype)
            else:
                assert torch.equal(b1, b0), (step, name)
    ref.eval(), ours.eval()
    before = [b.clone() for b in ours.buffers()]
    x = torch.randn(shape, generator=g, dtype=dtype)
    gy = torch.randn(shape, generator=g, dtype=dtype)
    (y0, dx0), (y1, dx1) = _step(ref, x, gy), _step(ours, x, gy)
    close(y1, y0, dtype)
    close(dx1, dx0, dtype)
    for b0, b1 in zip(before, ours.buffers(), strict=True):  # eval leaves them alone
        assert torch.equal(b1, b0)


def test_running_statistics_update_in_torchs_buffers_in_place():
    ref, ours = _pair(nn.BatchNorm2d, (4,), {"momentum": None}, torch.float64)
    buffers = {k: (b, b.data_ptr()) for k, b in ours.named_buffers()}
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    for _ in range(4):
        ref(x * 3 + 1), ours(x * 3 + 1)
    for k, (b, ptr) in buffers.items():
        now = dict(ours.named_buffers())[k]
        assert now is b and now.data_ptr() == ptr, k  # the same tensors, written in place
    assert int(ours.num_batches_tracked) == 4 == int(ref.num_batches_tracked)
    close(ours.running_mean, ref.running_mean)
    close(ours.running_var, ref.running_var)


def test_state_dict_loads_across_and_old_checkpoints():
    ref = nn.BatchNorm1d(4)
    randomize(ref)
    ref(torch.randn(8, 4))
    ours = nt.BatchNorm1d(4)
    assert ours.load_state_dict(ref.state_dict()) == ref.load_state_dict(ours.state_dict())
    for (k0, v0), (k1, v1) in zip(ref.state_dict().items(), ours.state_dict().items(), strict=True):
        assert k0 == k1 and torch.equal(v0, v1)
    old = {k: v for k, v in ref.state_dict().items() if k != "num_batches_tracked"}
    for layer in (nn.BatchNorm1d(4), nt.BatchNorm1d(4)):  # a version-1 checkpoint, as torch loads it
        layer(torch.randn(3, 4))
        assert layer.load_state_dict(old) == ([], [])
        assert int(layer.num_batches_tracked) == 1
        assert torch.equal(layer.running_var, ref.running_var)
    with pytest.raises(RuntimeError, match="size mismatch"):
        nt.BatchNorm1d(5).load_state_dict(ref.state_dict())


# ---------------------------------------------------------------------- autograd modes
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_no_grad_and_inference_mode_keep_nothing(mode):
    ref, ours = _pair(nn.BatchNorm1d, (3,), {}, torch.float32)
    x = torch.randn(6, 3)
    with mode():
        y0, y1 = ref(x), ours(x)
    assert y1.grad_fn is None and not y1.requires_grad
    close(y1, y0, torch.float32)
    close(ours.running_mean, ref.running_mean, torch.float32)  # training under no_grad: updated
    assert int(ours.num_batches_tracked) == 1
    ln = nt.LayerNorm(3)
    with mode():
        y = ln(torch.randn(2, 3, requires_grad=True))
    assert y.grad_fn is None


def test_saved_state_freed_after_backward():
    ln = nt.LayerNorm(5)
    x = torch.randn(4, 5, requires_grad=True)
    y = ln(x)
    assert y.grad_fn.saved.x is None  # autograd holds the saved arrays, not the context
    assert len(y.grad_fn.saved_tensors) == 6
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()
    x.grad = None
    c = torch.randn(4, 5)
    y = ln(x)
    (y * c).sum().backward(retain_graph=True)
    g1 = x.grad.clone()
    (y * c).sum().backward()
    close(x.grad, 2 * g1, torch.float32)


def test_input_modified_in_place_after_forward_is_caught():
    x = torch.randn(4, 5, requires_grad=True)
    h = x * 1
    y = nt.layer_norm(h, (5,))
    h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_only_needed_gradients():
    ln = nt.LayerNorm(5)
    ln.weight.requires_grad_(False)
    x = torch.randn(4, 5)
    ln(x).sum().backward()
    assert ln.weight.grad is None and ln.bias.grad is not None and x.grad is None


def test_double_backward_raises_clearly():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = nt.LayerNorm(4, dtype=torch.float64)(x)
    (g,) = torch.autograd.grad((y ** 3).sum(), x, create_graph=True)  # first order: fine
    ref = torch.autograd.grad((nn.LayerNorm(4, dtype=torch.float64)(x) ** 3).sum(), x)[0]
    close(g, ref)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


# ---------------------------------------------------------------------- layouts and dtypes
CL_LAYERS = [
    (nn.BatchNorm2d, (4,), {}, (2, 4, 5, 3), torch.channels_last),
    (nn.BatchNorm3d, (4,), {}, (2, 4, 3, 2, 3), torch.channels_last_3d),
    (nn.GroupNorm, (2, 4), {}, (2, 4, 5, 3), torch.channels_last),
    (nn.InstanceNorm2d, (4,), {"affine": True}, (2, 4, 5, 3), torch.channels_last),
]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize(("torch_cls", "args", "kwargs", "shape", "fmt"), CL_LAYERS,
                         ids=[c[0].__name__ for c in CL_LAYERS])
def test_channels_last_like_torch(torch_cls, args, kwargs, shape, fmt, backend):
    ref, ours = _pair(torch_cls, args, kwargs, torch.float64, backend)
    for training in (True, False):
        ref.train(training), ours.train(training)
        x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
        gy = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
        (y0, dx0), (y1, dx1) = _step(ref, x, gy), _step(ours, x, gy)
        close(y1, y0)
        close(dx1, dx0)
        assert y1.stride() == y0.stride() and dx1.stride() == dx0.stride(), torch_cls
    for p0, p1 in zip(ref.parameters(), ours.parameters(), strict=True):
        close(p1.grad, p0.grad)


def test_non_contiguous_inputs_and_gradients():
    for torch_cls, args in ((nn.LayerNorm, (4,)), (nn.BatchNorm1d, (3,)), (nn.GroupNorm, (1, 3))):
        ref, ours = _pair(torch_cls, args, {}, torch.float64)
        x = torch.randn(3, 5, 4, dtype=torch.float64).transpose(0, 1)
        gy = torch.randn(4, 3, 5, dtype=torch.float64).permute(2, 1, 0)
        assert not x.is_contiguous() and not gy.is_contiguous()
        (y0, dx0), (y1, dx1) = _step(ref, x, gy), _step(ours, x, gy)
        close(y1, y0)
        close(dx1, dx0)
        # a gradient of stride 0 along the batch (sum(0)'s backward expands)
        xr = x.detach().clone().requires_grad_()
        ref(xr).sum(0).square().sum().backward()
        xo = x.detach().clone().requires_grad_()
        ours(xo).sum(0).square().sum().backward()
        close(xo.grad, xr.grad)


def test_float16_and_bfloat16():
    ref, ours = _pair(nn.LayerNorm, (8,), {}, torch.float16)
    x = torch.randn(4, 8, dtype=torch.float16, requires_grad=True)
    y = ours(x)
    assert y.dtype == torch.float16
    assert rel_err(y, ref(x)) < 2e-3
    y.sum().backward()
    assert x.grad.dtype == torch.float16
    with pytest.raises(TypeError, match="bfloat16"):
        nt.LayerNorm(8, dtype=torch.bfloat16)(torch.randn(2, 8, dtype=torch.bfloat16))


def test_cuda_tensor_on_a_cpu_backend_is_refused():
    pytest.importorskip("torch.cuda")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with pytest.raises(TypeError, match="backend"):
        nt.layer_norm(torch.randn(2, 4, device="cuda"), (4,), backend="numba")


def test_other_backends_through_dlpack():
    """A backend of torch tensors (array-api-torch) and one of immutable arrays (array-api-jax,
    whose new running statistics are copied into torch's buffers)."""
    from normcore import list_backends
    available = {b.name for b in list_backends() if b.available}
    ran = 0
    for backend in ("array-api-torch", "array-api-jax"):
        if backend not in available:
            continue
        ran += 1
        ref, ours = _pair(nn.BatchNorm1d, (3,), {}, torch.float32, backend)
        x = torch.randn(6, 3)
        gy = torch.randn(6, 3)
        (y0, dx0), (y1, dx1) = _step(ref, x, gy), _step(ours, x, gy)
        close(y1, y0, torch.float32)
        close(dx1, dx0, torch.float32)
        close(ours.weight.grad, ref.weight.grad, torch.float32)
        close(ours.running_var, ref.running_var, torch.float32)
    if not ran:
        pytest.skip("neither array-api-torch nor array-api-jax is available")


# ---------------------------------------------------------------------- torch.compile
def _small_net(dtype=torch.float32):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 8), nn.LayerNorm(8)).to(dtype)
    randomize(net)
    return net


def test_torch_compile_runs_and_matches():
    net = _small_net(torch.float64)  # float64: inductor's own float32 rounding stays out of it
    fast = nt.convert(net)
    torch._dynamo.reset()
    compiled = torch.compile(fast)  # the default backend (inductor): graph breaks at our layers
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    y0, y1 = net(xs[0]), compiled(xs[1])
    close(y1, y0)
    y0.square().sum().backward()
    y1.square().sum().backward()
    close(xs[1].grad, xs[0].grad)
    for p0, p1 in zip(net.parameters(), fast.parameters(), strict=True):
        close(p1.grad, p0.grad, floor=1e-3)  # (the conv's bias, before BatchNorm: zero gradient)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="normcore.torch layers run normcore's kernels"):
        torch.compile(fast, fullgraph=True, backend="eager")(x)
    torch._dynamo.reset()


# ---------------------------------------------------------------------- convert()
def test_convert_copy_inplace_and_back():
    net = _small_net(torch.float64)
    net.eval()
    hits = []
    handle = net[1].register_forward_hook(lambda m, i, o: hits.append(type(m).__module__))
    copy_ = nt.convert(net, backend="numpy")
    assert type(net[1]) is nn.BatchNorm2d and type(copy_[1]) is nt.BatchNorm2d
    assert type(copy_[5]) is nt.LayerNorm and copy_[5].backend == "numpy"
    assert not copy_.training and not copy_[1].training
    assert copy_[1].weight is not net[1].weight
    assert list(copy_.state_dict()) == list(net.state_dict())
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    close(copy_(x), net(x))
    assert hits == ["normcore.torch._modules", "torch.nn.modules.batchnorm"]  # the hook came along
    weight = net[1].weight
    same = nt.convert(net, inplace=True)
    assert same is net and type(net[1]) is nt.BatchNorm2d and net[1].weight is weight
    assert net[1].backend is None
    handle.remove()  # the handle still finds the hook
    net(x)
    assert len(hits) == 2
    back = nt.unconvert(net)
    assert type(back[1]) is nn.BatchNorm2d and type(back[5]) is nn.LayerNorm
    assert "backend" not in back[1].__dict__ and type(net[1]) is nt.BatchNorm2d
    close(back(x), net(x))
    assert type(nt.convert(nn.LayerNorm(3))) is nt.LayerNorm
    assert nt.convert(copy_, backend="numba")[5].backend == "numba"


def test_convert_keeps_shared_layers_shared_and_names_skipped_ones():
    class MyNorm(nn.LayerNorm):
        pass

    ln = nn.LayerNorm(4)
    net = nn.ModuleDict({"a": ln, "b": ln, "c": MyNorm(4), "d": nn.SyncBatchNorm(4),
                         "e": nn.Sequential(nn.GroupNorm(2, 4), nn.LazyBatchNorm1d())})
    with pytest.warns(UserWarning, match=r"c: .*MyNorm; d: torch.nn.modules.batchnorm.SyncBatchNorm"
                                         r"; e.1: torch.nn.modules.batchnorm.LazyBatchNorm1d"):
        out = nt.convert(net, inplace=True)  # (a lazy layer cannot be deep-copied)
    assert out["a"] is out["b"] and type(out["a"]) is nt.LayerNorm
    assert type(out["c"]) is MyNorm and type(out["d"]) is nn.SyncBatchNorm
    assert type(out["e"][0]) is nt.GroupNorm
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nt.convert(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        nt.convert(object())


def test_convert_training_steps_equal():
    """Three SGD steps, converted vs original, in float64: parameters and buffers stay equal."""
    net = _small_net(torch.float64)
    fast = nt.convert(net)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (net, fast)]
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64)
        for m, opt in zip((net, fast), opts, strict=True):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for (k, v0), v1 in zip(net.state_dict().items(), fast.state_dict().values(), strict=True):
        if v0.is_floating_point():
            close(v1, v0)
        else:
            assert torch.equal(v1, v0), k


# ---------------------------------------------------------------------- models nobody here wrote
def _compare_models(build, make_input, run, n_norms):
    """Converted vs original: outputs, input gradients and parameter gradients, float64 to 1e-9
    relative. In float32, on every tensor, the converted model's error (against the original in
    float64) is within 3x the original's own float32 error (against the same reference), and the
    converted-vs-original difference within 4x it: two float32 computations of one model, each
    rounding its own way (measured: 0.5-2x and 0.6-2.6x). A parameter gradient
    that is zero in exact arithmetic (attention's key bias) is measured against 1e-3 of the
    largest parameter gradient, the scale its rounding noise comes from."""
    torch.manual_seed(0)
    base = build()  # the model's own random initialization; norm layers' affine made non-trivial
    for m in base.modules():
        if type(m) in nt.DROP_INS:
            randomize(m, seed=5)
    results = {}
    for dtype in (torch.float64, torch.float32):
        orig = copy.deepcopy(base).to(dtype)
        conv = nt.convert(orig)
        assert sum(type(m) in nt.DROP_INS.values() for m in conv.modules()) == n_norms
        inp = make_input(dtype)
        outs = []
        for model in (orig, conv):
            x = inp.clone().requires_grad_()
            y = run(model, x)
            y.backward(torch.ones_like(y) / y.numel() + torch.linspace(-1, 1, y.numel(), dtype=dtype
                                                                         ).reshape(y.shape))
            outs.append([y, x.grad] + [p.grad for p in model.parameters()])
        results[dtype] = outs
    o64, c64 = results[torch.float64]
    o32, c32 = results[torch.float32]
    unused = [i for i, t in enumerate(o64) if t is None]  # (BERT's word embeddings: inputs_embeds)
    assert unused == [i for i, t in enumerate(c64) if t is None] == [
        i for i, t in enumerate(o32) if t is None] == [i for i, t in enumerate(c32) if t is None]
    assert len(unused) <= 1 and 0 not in unused and 1 not in unused
    top = max(t.abs().max().item() for t in o64[2:] if t is not None)
    floors = [0.0, 0.0] + [1e-3 * top] * (len(o64) - 2)
    for i, (a, b) in enumerate(zip(c64, o64, strict=True)):
        if i not in unused:
            assert rel_err(a, b, floors[i]) <= 1e-9, (i, rel_err(a, b, floors[i]))
    for i, (a, b, ref) in enumerate(zip(c32, o32, o64, strict=True)):
        if i in unused:
            continue
        own = rel_err(b, ref, floors[i])  # torch's own float32 error (against float64)
        ours = rel_err(a, ref, floors[i])  # the converted model's, against the same reference
        between = rel_err(a, b, floors[i])  # converted vs original, both float32
        assert ours <= 3 * own + 1e-7, (i, ours, own)
        assert between <= 4 * own + 1e-7, (i, between, own)


@needs_transformers
def test_transformers_resnet_converted_equals_original():
    from transformers import ResNetConfig, ResNetModel

    def build():
        cfg = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                           layer_type="basic")
        return ResNetModel(cfg).train()

    def make_input(dtype):
        return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7),
                           dtype=torch.float64).to(dtype)

    _compare_models(build, make_input, lambda m, x: m(pixel_values=x).pooler_output, n_norms=6)


@needs_transformers
def test_transformers_bert_converted_equals_original():
    from transformers import BertConfig, BertModel

    def build():
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, vocab_size=100, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, attn_implementation="eager")
        return BertModel(cfg, add_pooling_layer=False).train()

    def make_input(dtype):
        return torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(8),
                           dtype=torch.float64).to(dtype)

    _compare_models(build, make_input, lambda m, x: m(inputs_embeds=x).last_hidden_state,
                    n_norms=5)


def test_transformer_encoder_layer_converted_equals_original():
    def build():
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0,
                                           batch_first=True)
        return nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False)

    def make_input(dtype):
        return torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(9),
                           dtype=torch.float64).to(dtype)

    _compare_models(build, make_input, lambda m, x: m(x), n_norms=5)
