"""Developer self-check: every kernel of the Numba backend against the NumPy reference.

Run with ``python -m normcore_numba._selfcheck``; exits non-zero on the first mismatch.
Covers 1-element and prime shapes, non-contiguous and channels-last inputs, float16/32/64,
weight/bias None and center False.
"""

from __future__ import annotations

import sys

import numpy as np

from normcore.backend import dropout_keep_mask

from .backend import NumbaBackend

TOL = {np.float64: 1e-10, np.float32: 2e-4, np.float16: 2e-2}


def _ref():
    from normcore_numpy.backend import NumpyBackend

    return NumpyBackend()


def _close(name, got, want, dtype):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    tol = TOL[np.dtype(dtype).type]
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    scale = max(1.0, float(np.abs(w).max(initial=0.0)))
    err = float(np.abs(g - w).max(initial=0.0))
    if not (err <= tol * scale or np.allclose(g, w, rtol=tol, atol=tol, equal_nan=True)):
        raise AssertionError(f"{name} {dtype.__name__}: max abs err {err:.3g} (scale {scale:.3g})")


def _layouts(rng, shape, dtype, offset=0.0):
    """Contiguous, sliced (strided) and transposed-storage versions of the same values."""
    base = (rng.standard_normal(shape) + offset).astype(dtype)
    yield "C", base
    big = np.zeros(shape[:-1] + (shape[-1] * 2,), dtype=dtype)
    big[..., ::2] = base
    yield "strided", big[..., ::2]
    yield "F", np.asfortranarray(base)


def check(verbose: bool = True) -> int:
    nb, ref = NumbaBackend(), _ref()
    rng = np.random.default_rng(0)
    n = 0
    dtypes = (np.float64, np.float32, np.float16)
    for dt in dtypes:
        # ---------------------------------------------------------------- channel view
        for shape in [(1, 1, 1), (2, 3, 5), (7, 13, 11), (1, 2, 4099), (16, 4, 1), (3, 64, 49)]:
            for lay, x in _layouts(rng, shape, dt, offset=3.0):
                cases = [("plain", x)]
                if lay == "C" and shape[1] > 1 and shape[2] > 1:
                    nlc = np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)
                    cases.append(("channels_last", nlc))
                for tag, xx in cases:
                    nm = f"{shape} {lay}/{tag}"
                    m1, v1 = nb.channel_moments(xx)
                    m0, v0 = ref.channel_moments(xx)
                    _close("moments.mean " + nm, m1, m0, dt)
                    _close("moments.var " + nm, v1, v0, dt)
                    c = shape[1]
                    for wb in [(None, None), (rng.random(c) + 0.5, rng.standard_normal(c))]:
                        w, b = (None if a is None else a.astype(np.float32) for a in wb)
                        _close(
                            "normalize " + nm,
                            nb.channel_normalize(xx, m0, v0, 1e-5, w, b),
                            ref.channel_normalize(xx, m0, v0, 1e-5, w, b),
                            dt,
                        )
                        dy = rng.standard_normal(shape).astype(dt)
                        if tag == "channels_last":
                            dy = np.ascontiguousarray(dy.transpose(0, 2, 1)).transpose(0, 2, 1)
                        for bs in (True, False):
                            got = nb.channel_normalize_backward(dy, xx, m0, v0, 1e-5, w, bs)
                            want = ref.channel_normalize_backward(dy, xx, m0, v0, 1e-5, w, bs)
                            for nm2, g_, w_ in zip(("dx", "dw", "db"), got, want, strict=True):
                                _close(f"bn_bwd.{nm2} {nm} bs={bs}", g_, w_, dt)
                    n += 1
        # ---------------------------------------------------------------- group view
        for shape in [
            (1, 1, 1, 1),
            (3, 1, 7, 1),
            (5, 2, 3, 1),
            (2, 4, 3, 17),
            (3, 5, 1, 13),
            (4, 1, 1031, 1),
            (2, 1, 2, 2),
            (2, 2, 3, 70),
        ]:
            for lay, x in _layouts(rng, shape, dt, offset=2.0):
                g, d = shape[1], shape[2]
                for center in (True, False):
                    for wb in [
                        (None, None),
                        (rng.random((g, d)) + 0.5, None),
                        (rng.random((g, d)), rng.standard_normal((g, d))),
                    ]:
                        w, b = (None if a is None else a.astype(dt) for a in wb)
                        got = nb.group_normalize(x, w, b, 1e-5, center)
                        want = ref.group_normalize(x, w, b, 1e-5, center)
                        nm = f"{shape} {lay} center={center}"
                        for nm2, g_, w_ in zip(("y", "mean", "var"), got, want, strict=True):
                            _close(f"gn.{nm2} {nm}", g_, w_, dt)
                        dy = rng.standard_normal(shape).astype(dt)
                        got = nb.group_normalize_backward(dy, x, want[1], want[2], 1e-5, w, center)
                        want = ref.group_normalize_backward(dy, x, want[1], want[2], 1e-5, w, center)
                        for nm2, g_, w_ in zip(("dx", "dw", "db"), got, want, strict=True):
                            _close(f"gn_bwd.{nm2} {nm}", g_, w_, dt)
                        n += 1
        # ---------------------------------------------------------------- rows
        for shape in [(1, 1), (1, 2), (5, 7), (13, 257), (64, 27)]:
            for lay, x in _layouts(rng, shape, dt):
                for ddof in (0, 1):
                    if shape[1] - ddof <= 0:
                        continue
                    for eir in (True, False):
                        got = nb.standardize_rows(x, 1e-5, ddof, eir)
                        want = ref.standardize_rows(x, 1e-5, ddof, eir)
                        nm = f"{shape} {lay} ddof={ddof} eir={eir}"
                        for nm2, g_, w_ in zip(("y", "mean", "den"), got, want, strict=True):
                            _close(f"ws.{nm2} {nm}", g_, w_, dt)
                        dy = rng.standard_normal(shape).astype(dt)
                        _close(
                            "ws_bwd " + nm,
                            nb.standardize_rows_backward(dy, x, want[1], want[2], 1e-5, ddof, eir),
                            ref.standardize_rows_backward(dy, x, want[1], want[2], 1e-5, ddof, eir),
                            dt,
                        )
                        n += 1
        # ---------------------------------------------------------------- dropout
        for shape in [(1,), (7,), (3, 5, 11), (1000, 33)]:
            for lay, x in _layouts(rng, shape, dt):
                for p in (0.0, 0.1, 0.5, 0.999, 1.0):
                    seed = int(rng.integers(0, 2**63 - 1))
                    y = nb.dropout(x, p, seed)
                    want = ref.dropout(x, p, seed)
                    assert y.dtype == want.dtype and y.shape == want.shape
                    if 0 < p < 1:
                        keep = dropout_keep_mask(x.shape, p, seed)
                        nz = x != 0
                        assert np.array_equal((y != 0) & nz, keep & nz), ("dropout mask", shape)
                    assert np.array_equal(y, want), ("dropout values", shape, lay, p, dt)
                    n += 1
    # running_update
    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    mm, vv = rng.random((3, 5)), rng.random((3, 5))
    for g_, w_ in zip(
        nb.running_update(rm, rv, mm, vv, 0.1, 1.2),
        ref.running_update(rm, rv, mm, vv, 0.1, 1.2),
        strict=True,
    ):
        _close("running_update", g_, w_, np.float32)
    # float32 accumulation safety: mean 1e4, std 1
    x = (rng.standard_normal((8, 3, 5000)) + 1e4).astype(np.float32)
    v32 = nb.channel_moments(x)[1]
    v64 = ref.channel_moments(x.astype(np.float64))[1]
    assert np.all(np.abs(v32 / v64 - 1) < 1e-3), (v32, v64)
    x4 = x.reshape(8, 3, 5000, 1)
    v32 = nb.group_normalize(x4, None, None, 1e-5, True)[2]
    v64 = ref.group_normalize(x4.astype(np.float64), None, None, 1e-5, True)[2]
    assert np.all(np.abs(v32 / v64 - 1) < 1e-3)
    if verbose:
        print(f"selfcheck OK: {n} case groups")
    return 0


if __name__ == "__main__":
    sys.exit(check())
