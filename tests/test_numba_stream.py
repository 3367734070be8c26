"""The numba backend's non-temporal-store path (backends/normcore_numba/_vmap.py) is chosen only
when a pass's arrays fill the last-level cache; these force it on small arrays of awkward lengths and
offsets. The channel kernels must give the very same bits as the cached path; the group forward
(and the row backward) sums the next row in the loop that writes this one, so its alignment head
changes that row's summation order: equal to float32 rounding there."""

from __future__ import annotations

import numpy as np
import pytest

import normcore

pytest.importorskip("numba")
B = pytest.importorskip("normcore_numba.backend")


def _both(monkeypatch, fn):
    out = []
    for flag in (True, False):
        monkeypatch.setattr(B, "_stream", lambda x, row, arrays, flag=flag: flag)
        out.append(fn())
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 1), (3, 2, 17), (2, 5, 1001), (1, 1, 4099)])
def test_channel_normalize_streamed_equals_cached(monkeypatch, shape, dtype):
    be = normcore.get_backend("numba")
    rng = np.random.default_rng(3)
    # offset by one element so y's rows start at every alignment
    x = rng.normal(2.0, 3.0, size=(np.prod(shape) + 1,)).astype(dtype)[1:].reshape(shape)
    mean, var = be.channel_moments(x)
    w, b = rng.normal(size=shape[1]).astype(dtype), rng.normal(size=shape[1]).astype(dtype)
    streamed, cached = _both(monkeypatch, lambda: be.channel_normalize(x, mean, var, 1e-5, w, b))
    np.testing.assert_array_equal(streamed, cached)
    want = normcore.get_backend("numpy").channel_normalize(x, mean, var, 1e-5, w, b)
    np.testing.assert_allclose(streamed, want, rtol=2e-6 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 5), (3, 7, 33), (2, 16, 40)])
def test_channels_last_streamed_equals_cached(monkeypatch, shape):
    """Channels-last input (an NHWC array seen as (N, C, L)) takes the periodic maps, forward and
    backward: streamed or cached, the same bits."""
    be = normcore.get_backend("numba")
    rng = np.random.default_rng(7)
    n, c, l_ = shape
    nlc = rng.normal(2.0, 3.0, size=(n * l_ * c + 1,)).astype(np.float32)[1:]
    x = nlc.reshape(n, l_, c).transpose(0, 2, 1)
    dy = rng.normal(size=(n, l_, c)).astype(np.float32).transpose(0, 2, 1)
    mean, var = be.channel_moments(x)
    w, b = rng.normal(size=c).astype(np.float32), rng.normal(size=c).astype(np.float32)
    streamed, cached = _both(monkeypatch, lambda: be.channel_normalize(x, mean, var, 1e-5, w, b))
    np.testing.assert_array_equal(streamed, cached)
    assert streamed.strides == x.strides or streamed.strides[1] == streamed.itemsize
    streamed, cached = _both(
        monkeypatch, lambda: be.channel_normalize_backward(dy, x, mean, var, 1e-5, w, True))
    for s_, c_ in zip(streamed, cached, strict=True):
        np.testing.assert_array_equal(s_, c_)
    want = normcore.get_backend("numpy").channel_normalize_backward(dy, x, mean, var, 1e-5, w,
                                                                    True)
    np.testing.assert_allclose(streamed[0], want[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("shape", [(3, 2, 37, 1), (2, 2, 3, 129), (2, 1, 5, 3)])
def test_group_normalize_streamed_equals_cached(monkeypatch, shape, center):
    be = normcore.get_backend("numba")
    rng = np.random.default_rng(4)
    x = rng.normal(1.0, 2.0, size=shape).astype(np.float32)
    w = rng.normal(size=shape[1:3]).astype(np.float32)
    b = rng.normal(size=shape[1:3]).astype(np.float32)
    streamed, cached = _both(monkeypatch, lambda: be.group_normalize(x, w, b, 1e-5, center))
    for s, c in zip(streamed, cached, strict=True):
        np.testing.assert_allclose(s, c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 2, 17), (2, 5, 1001)])
def test_channel_backward_streamed_equals_cached(monkeypatch, shape):
    be = normcore.get_backend("numba")
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, size=shape).astype(np.float32)
    dy = rng.normal(size=(np.prod(shape) + 3,)).astype(np.float32)[3:].reshape(shape)
    mean, var = be.channel_moments(x)
    w = rng.normal(size=shape[1]).astype(np.float32)
    streamed, cached = _both(
        monkeypatch, lambda: be.channel_normalize_backward(dy, x, mean, var, 1e-5, w, True))
    for s, c in zip(streamed, cached, strict=True):
        np.testing.assert_array_equal(s, c)


@pytest.mark.parametrize("shape", [(3, 2, 37, 1), (2, 2, 3, 129), (2, 1, 5, 3)])
def test_group_backward_streamed_equals_cached(monkeypatch, shape):
    be = normcore.get_backend("numba")
    rng = np.random.default_rng(6)
    x = rng.normal(1.0, 2.0, size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    w = rng.normal(size=shape[1:3]).astype(np.float32)
    _, mean, var = be.group_normalize(x, w, None, 1e-5, True)
    streamed, cached = _both(
        monkeypatch, lambda: be.group_normalize_backward(dy, x, mean, var, 1e-5, w, True))
    # dx: rows of L == 1 are pipelined like the forward (a row's map sums the next row), so the
    # head changes the next row's summation order; dweight and dbias: the very same bits
    np.testing.assert_allclose(streamed[0], cached[0], rtol=1e-5, atol=1e-6)
    for s, c in zip(streamed[1:], cached[1:], strict=True):
        np.testing.assert_array_equal(s, c)


def test_last_level_cache_size_from_sysfs(tmp_path):
    for name, level, size in (("index0", "1", "48K"), ("index2", "2", "1024K"),
                              ("index3", "3", "32768K\n"), ("index9", "x", "1G")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "level").write_text(level)
        (tmp_path / name / "size").write_text(size)
    assert B._llc_bytes(str(tmp_path)) == 32 << 20  # the highest level; a malformed entry skipped
    assert B._llc_bytes(str(tmp_path / "absent")) == 32 << 20  # unreadable: the default
    (tmp_path / "index4").mkdir()
    (tmp_path / "index4" / "level").write_text("4")
    (tmp_path / "index4" / "size").write_text("256M")
    B._llc_bytes.cache_clear()
    assert B._llc_bytes(str(tmp_path)) == 256 << 20


def test_stream_when_the_pass_fills_the_cache(monkeypatch):
    monkeypatch.setattr(B, "_llc_bytes", lambda: 32 << 20)
    x16 = np.empty((16 << 20) // 4, dtype=np.float32)  # 16 MB
    x12 = x16[: (12 << 20) // 4]
    x8 = x16[: (8 << 20) // 4]
    assert B._stream(x16, 1024, 2)  # forward: x and y, 32 MB
    assert not B._stream(x12, 1024, 2)
    assert B._stream(x12, 1024, 3)  # backward: dy, x and dx, 36 MB
    assert not B._stream(x8, 1024, 3)
    assert not B._stream(x16, 64, 3)  # rows of 256 bytes: the alignment head would dominate


@pytest.mark.parametrize("layout", ["group", "channel"])
@pytest.mark.parametrize("skip", [0, 1, 3])
def test_streamed_output_starts_where_the_input_does(monkeypatch, layout, skip):
    """A streaming map aligns its stores to a line; an output at the input's offset within the
    line lines up the input's loads too (_pool). Cached stores keep line-aligned outputs."""
    be = normcore.get_backend("numba")
    x = np.random.default_rng(1).normal(size=(1 << 19) + skip).astype(np.float32)[skip:]
    x4 = x.reshape(8, 4, 4, 4096)  # 2 MiB: pooled
    for flag in (True, False):
        monkeypatch.setattr(B, "_stream", lambda x, row, arrays, flag=flag: flag)
        if layout == "group":
            y = be.group_normalize(x4, None, None, 1e-5, True)[0]
        else:
            x3 = x4.reshape(8, 16, 4096)
            mean, var = be.channel_moments(x3)
            y = be.channel_normalize(x3, mean, var, 1e-5, None, None)
        assert y.ctypes.data % 64 == (x.ctypes.data % 64 if flag else 0)
        del y
