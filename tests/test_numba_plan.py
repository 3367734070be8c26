"""``normcore_numba._plan``: the one place that decides how a numba kernel call cuts its work."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import numpy as np
import pytest

numba = pytest.importorskip("numba")
from normcore_numba import _plan  # noqa: E402
from normcore_numba._plan import plan  # noqa: E402

PKG = pathlib.Path(_plan.__file__).parent


def _p(view, a, nt):
    return plan(view, a.shape, a.strides, a.itemsize, nt)


def test_small_inputs_run_serially(monkeypatch):
    monkeypatch.setattr(_plan, "SERIAL_MAX", 32768)
    assert _plan.threads(32768) == 1
    assert _plan.threads(32769) == numba.get_num_threads()
    monkeypatch.setattr(_plan, "SERIAL_MAX", 0)
    assert _plan.threads(1) == numba.get_num_threads()


def test_row_local_kernels_plan_for_the_pool(monkeypatch):
    """Kernels whose results do not depend on their blocks plan for the pool's size without
    reading the thread count; results are the same under numba.set_num_threads(1) and match the
    reference."""
    import normcore as nc

    monkeypatch.setattr(_plan, "SERIAL_MAX", 32768)
    assert _plan.threads(32768, exact=False) == 1
    assert _plan.threads(32769, exact=False) == numba.config.NUMBA_NUM_THREADS
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 256)).astype(np.float32)
    layers = [nc.LayerNorm(256, backend=b) for b in ("numba", "numpy")]
    w = rng.random(256, dtype=np.float32)
    for layer in layers:
        layer.weight.data[:] = w
    want = layers[0](x)
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert np.array_equal(layers[0](x), want)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_allclose(want, layers[1](x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(256, 1, 256, 1), (3, 7, 129, 1), (4, 32, 2, 64), (3, 7, 3, 129)])
def test_group_forwards_do_not_depend_on_their_blocks(shape):
    """What lets the group forwards plan for the pool's size: every block count gives the same
    bits (float64, where a different order of the sums would show)."""
    from normcore_numba.backend import _kernels

    k = _kernels("_group")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 3 + 5
    n, g, d, l_ = shape
    flat = l_ == 1
    xv = x[:, :, :, 0] if flat else x
    w, b = rng.random((g, d)), rng.random((g, d))
    kernel = k.forward_flat if flat else k.forward_lines
    outs = []
    for nblk in (1, 2, 3, 8):
        y, mean, var = np.empty_like(xv), np.empty((n, g)), np.empty((n, g))
        kernel.run(nblk, xv, w, b, 1e-5, True, y, mean, var)
        outs.append((y, mean, var))
    for other in outs[1:]:
        for a, c in zip(outs[0], other, strict=True):
            assert np.array_equal(a, c)


def test_row_and_dropout_kernels_do_not_depend_on_their_blocks():
    from normcore_numba.backend import _kernels

    k = _kernels("_rows")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((37, 129)) * 3 + 5
    outs = []
    for nblk in (1, 2, 3, 8):
        y, mean, denom = np.empty_like(x), np.empty(37), np.empty(37)
        k.standardize.run(nblk, x, 1e-5, 1, True, y, mean, denom)
        dx = np.empty_like(x)
        k.standardize_backward.run(nblk, y, x, mean, denom, 1, True, dx)
        d = np.empty(x.size)
        k.dropout.run(nblk, x.reshape(-1), np.uint64(7), np.uint64(1 << 23), 2.0, d)
        outs.append((y, mean, denom, dx, d))
    for other in outs[1:]:
        for a, c in zip(outs[0], other, strict=True):
            assert np.array_equal(a, c)


def test_the_threshold_comes_from_the_environment():
    code = "from normcore_numba import _plan; print(_plan.SERIAL_MAX)"
    for raw, want in (("0", "0"), ("1000", "1000"), (None, "32768")):
        env = {k: v for k, v in __import__("os").environ.items() if k != "NORMCORE_NUMBA_SERIAL_MAX"}
        if raw is not None:
            env["NORMCORE_NUMBA_SERIAL_MAX"] = raw
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.stdout.strip() == want, out.stderr


def test_channel_layouts(monkeypatch):
    monkeypatch.setattr(_plan, "SERIAL_MAX", 0)  # every input big; small ones below
    f32 = np.float32
    nchw = np.empty((32, 64, 56, 56), f32).reshape(32, 64, -1)
    # channels of at most CHAN_BYTES: channel by channel, blocks of channels
    assert _p("channel", nchw, 2) == ("chan", 2 * _plan.UNITS_PER_THREAD, 1, 1)
    big = np.empty((32, 64, 128 * 128), f32)  # 2 MiB channels: (n, c) rows, n-major
    assert _p("channel", big, 2) == ("ncl", 2, 1, 1)
    nhwc = np.empty((32, 56, 56, 64), f32).transpose(0, 3, 1, 2).reshape(32, 64, -1)
    cb = 2 * _plan.COLS_BLOCKS
    assert _p("channel", nhwc, 2) == ("cols", cb, 8, 1)  # rows of C channels, 8 taken as one
    assert _p("channel", np.empty((4096, 512, 1), f32), 2) == ("cols", cb, 1, 1)  # BatchNorm1d
    assert _p("channel", np.empty((65536, 16, 1), f32), 2) == ("cols", cb, 32, 1)
    assert _p("channel", np.empty((12, 16, 1), f32), 1) == ("cols", 1, 2, 1)  # 2 divides 12
    slabs = np.empty((256, 64, 64), f32)  # short rows in small (C, L) slabs
    assert _p("channel", slabs, 2) == ("cols", 2, 1, 64)
    assert _p("channel", np.empty((256, 2, 16), f32), 2) == ("cols", 2, 16, 16)
    assert _p("channel", np.empty((2, 64, 64), f32), 2).layout == "chan"  # too few slabs
    assert _p("channel", np.empty((2, 1, 64), f32), 2).layout == "ncl"  # fewer channels than threads
    few = np.empty((1, 3, 1 << 20), f32)  # few long rows: cut into pieces
    p = _p("channel", few, 2)
    assert p.layout == "ncl" and p.nblk == 2 and p.pieces * 3 >= _plan.UNITS_PER_THREAD * 2
    assert _p("channel", few, 1) == ("ncl", 1, 1, 1)  # serial: no pieces


def test_small_inputs_take_the_kernels_that_compile_fastest(monkeypatch):
    monkeypatch.setattr(_plan, "SERIAL_MAX", 32768)
    f32 = np.float32
    assert _p("channel", np.empty((4, 8, 36), f32), 1) == ("chan", 1, 1, 1)  # not slabs
    assert _p("channel", np.empty((2, 1, 64), f32), 1) == ("chan", 1, 1, 1)
    assert _p("group", np.empty((16, 1, 64, 1), f32), 1) == ("flat", 1, 1, 1)  # one row a tile
    monkeypatch.setattr(_plan, "SERIAL_MAX", 0)
    assert _p("channel", np.empty((4, 8, 36), f32), 1) == ("cols", 1, 1, 36)
    assert _p("group", np.empty((16, 1, 64, 1), f32), 1) == ("flat", 1, 4, 1)


def test_group_layouts(monkeypatch):
    monkeypatch.setattr(_plan, "SERIAL_MAX", 0)
    f32 = np.float32
    assert _p("group", np.empty((8192, 1, 1024, 1), f32), 2) == ("flat", 2, 4, 1)  # LayerNorm
    assert _p("group", np.empty((16, 32, 8, 1024), f32), 2).layout == "lines"  # GroupNorm
    assert _p("group", np.empty((16, 32, 8, 49), f32), 2).layout == "flat"  # short L
    strided = np.empty((16, 32, 8, 98), f32)[..., ::2]
    assert _p("group", strided, 2).layout == "lines"
    assert _p("group", np.empty((1, 1, 8, 1), f32), 2).nblk == 1  # one row: one block


def test_kernel_modules_compile_only_their_own_functions():
    """numba keys a cached kernel on its own file: a helper from another file could change
    without the kernel recompiling. The kernel modules import compiled functions only from
    ``_shared``, whose source is part of every kernel's name (``_jit.TAG``)."""
    for name in ("_channel.py", "_cols.py", "_group.py", "_rows.py", "_shared.py"):
        tree = ast.parse((PKG / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = {a.name for a in node.names}
                if node.level:
                    assert node.module in ("_jit", "_shared"), name
                    assert node.module != "_jit" or names <= {"helper", "inline", "kernel"}, name
                    assert node.module != "_shared" or name != "_shared.py", name
                else:
                    assert node.module in ("__future__", "numba"), (name, node.module)
                    assert node.module != "numba" or names == {"prange"}, name


def test_no_private_numba_or_llvmlite_imports():
    root = PKG.parent.parent
    for path in [*(root / "backends").rglob("*.py"), *(root / "normcore").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                    else [])
            for m in mods:
                assert not m.startswith(("numba.core", "llvmlite", "numba.np.ufunc")), (path, m)


def test_kernel_names_are_the_same_in_every_process():
    """The options' hash names numba's cache files: a hash that changed with the process's
    string hashing (set order) made every process recompile every kernel."""
    code = "from normcore_numba import _jit; print(_jit.TAG)"
    tags = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)}
                           ).stdout for seed in (1, 2, 3)}
    assert len(tags) == 1 and len(tags.pop().strip()) == 8


@pytest.mark.parametrize("shape, channels_last, layout", [
    ((16, 8, 4, 4), False, "cols"),   # slabs: runs of L columns per channel
    ((64, 2, 4, 4), False, "cols"),   # slabs, adjacent rows taken as one
    ((4, 8, 16, 16), True, "cols"),   # rows of C channels
    ((2, 8, 40, 40), False, "chan"),
    ((1, 1, 300, 300), False, "ncl"),  # fewer channels than threads: rows cut into pieces
])
def test_every_channel_layout_matches_the_reference(monkeypatch, shape, channels_last, layout):
    monkeypatch.setattr(_plan, "SERIAL_MAX", 0)
    import normcore

    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        dy = np.ascontiguousarray(dy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    x3 = x.reshape(shape[0], shape[1], -1)
    assert _p("channel", x3, numba.get_num_threads()).layout == layout
    c = shape[1]
    w = rng.standard_normal(c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    nb, ref = normcore.get_backend("numba"), normcore.get_backend("numpy")
    y, mean, var = nb.channel_moments_normalize(x3, 1e-5, w, b)
    y0, mean0, var0 = ref.channel_moments_normalize(x3, 1e-5, w, b)
    np.testing.assert_allclose(y, y0, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(var, var0, rtol=1e-5)
    got = nb.channel_normalize_backward(dy.reshape(x3.shape), x3, mean, var, 1e-5, w, True)
    want = ref.channel_normalize_backward(dy.reshape(x3.shape), x3, mean0, var0, 1e-5, w, True)
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-4, atol=2e-4)
    y1 = nb.channel_normalize(x3, mean, var, 1e-5, w, b)
    np.testing.assert_allclose(y1, y, rtol=1e-6, atol=1e-6)
