"""The example backend: every kernel of the normcore contract in plain NumPy.

An independent implementation, not a copy of the reference: reductions are ``np.einsum`` calls
accumulating in float64 (so float32 input with a large mean keeps its variance), the elementwise
work runs in float32 for float16/float32 input (float64 for float64), per-channel and per-row
coefficients are folded so that each output is one fused multiply-add pass over the data, and
the dropout mask is computed with our own vectorized SplitMix64.

Contract reminders (see ``normcore/backend.py``): never mutate an input, return new arrays,
statistics are float64 for float64 input and float32 otherwise, and dweight/dbias come back in
the dtype of the weight that was passed (x's dtype when the weight is None).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normcore.backend import Availability, Backend

_F64 = np.float64


def _work(dtype: np.dtype) -> type:
    """The dtype elementwise arithmetic runs in: float64 for float64 input, float32 otherwise."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _stat(dtype: np.dtype) -> type:
    """The dtype of returned statistics (mean, var, denominators)."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _gdt(weight: np.ndarray | None, x: np.ndarray) -> np.dtype:
    return x.dtype if weight is None else weight.dtype


def _shift(sample: np.ndarray) -> np.ndarray:
    """A sample of each channel/row in float64, 0 where it is not finite: sums of ``x - shift``
    make a constant channel's mean exactly its value (a mean of 1.7e18's is an ulp off)."""
    sample = sample.astype(_F64)
    return np.where(np.isfinite(sample), sample, 0.0)


def _sum(spec: str, *arrays: np.ndarray) -> np.ndarray:
    """An einsum reduction accumulated in float64."""
    return np.einsum(spec, *arrays, dtype=_F64)


class ExampleBackend(Backend):
    """A plain-NumPy backend registered by the ``normcore-example-backend`` distribution."""

    name = "example"
    api_version = 2  # (NumPy arrays, mutable, synchronous: the contract's defaults fit)
    device = "cpu"
    dtypes = (np.float16, np.float32, np.float64)
    # All nine kernels (the default of ``Backend.kernels``); a partial backend would list fewer.

    def is_available(self) -> Availability:
        # A real plugin checks here for its library or device and says why it cannot run.
        return Availability(True)

    def version(self) -> str:
        from . import __version__

        return __version__

    def asarray(self, obj: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(obj, dtype=dtype)

    def to_numpy(self, arr: Any) -> np.ndarray:
        return np.asarray(arr)

    # ------------------------------------------------------------------ channel view (N, C, L)
    def channel_moments(self, x3):
        m = x3.shape[0] * x3.shape[2]
        shift = _shift(x3[0, :, 0])
        mean = shift + _sum("ncl->c", x3.astype(_F64) - shift[None, :, None]) / m
        xc = x3.astype(_F64) - mean[None, :, None]  # centred second pass: no cancellation
        var = _sum("ncl,ncl->c", xc, xc) / m
        sd = _stat(x3.dtype)
        return mean.astype(sd), var.astype(sd)

    def channel_normalize(self, x3, mean, var, eps, weight, bias):
        wt = _work(x3.dtype)
        rstd = 1.0 / np.sqrt(var.astype(_F64) + eps)
        scale = rstd if weight is None else rstd * weight.astype(_F64)
        # (x - mean) is exact in the working precision when x is near mean, so centre first.
        y = (x3.astype(wt) - mean.astype(wt)[None, :, None]) * scale.astype(wt)[None, :, None]
        if bias is not None:
            y += bias.astype(wt)[None, :, None]
        return y.astype(x3.dtype, copy=False)

    def channel_normalize_backward(self, dy3, x3, mean, var, eps, weight, batch_stats):
        wt = _work(x3.dtype)
        m = x3.shape[0] * x3.shape[2]
        rstd = 1.0 / np.sqrt(var.astype(_F64) + eps)
        w = np.ones_like(rstd) if weight is None else weight.astype(_F64)
        xc = x3.astype(wt) - mean.astype(wt)[None, :, None]
        s_dy = _sum("ncl->c", dy3)
        s_dyxc = _sum("ncl,ncl->c", dy3, xc)
        gd = _gdt(weight, x3)
        dweight, dbias = (s_dyxc * rstd).astype(gd), s_dy.astype(gd)
        a = w * rstd  # dx = a*dy + b*xc + c, per channel
        dx = dy3.astype(wt) * a.astype(wt)[None, :, None]
        if batch_stats:
            b = -w * rstd**3 * s_dyxc / m
            c = -a * s_dy / m
            dx += xc * b.astype(wt)[None, :, None]
            dx += c.astype(wt)[None, :, None]
        return dx.astype(x3.dtype, copy=False), dweight, dbias

    def running_update(self, running_mean, running_var, mean, var, momentum, var_correction):
        b = mean.shape[0]
        batch_mean = _sum("bc->c", mean) / b
        batch_var = _sum("bc->c", var) / b * var_correction
        new_mean = running_mean.astype(_F64) * (1.0 - momentum) + batch_mean * momentum
        new_var = running_var.astype(_F64) * (1.0 - momentum) + batch_var * momentum
        return new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)

    # ------------------------------------------------------------------ group view (N, G, D, L)
    def group_normalize(self, x4, weight, bias, eps, center):
        wt = _work(x4.dtype)
        m = x4.shape[2] * x4.shape[3]
        if center:
            shift = _shift(x4[:, :, 0, 0])
            mean = shift + _sum("ngdl->ng", x4.astype(_F64) - shift[:, :, None, None]) / m
            xc = x4.astype(_F64) - mean[:, :, None, None]
            var = _sum("ngdl,ngdl->ng", xc, xc) / m
        else:
            mean = np.zeros(x4.shape[:2], dtype=_F64)
            var = _sum("ngdl,ngdl->ng", x4, x4) / m
        rstd = (1.0 / np.sqrt(var + eps)).astype(wt)
        y = x4.astype(wt)
        if center:
            y = y - mean.astype(wt)[:, :, None, None]
        y = y * rstd[:, :, None, None]
        if weight is not None:
            y *= weight.astype(wt)[None, :, :, None]
        if bias is not None:
            y += bias.astype(wt)[None, :, :, None]
        sd = _stat(x4.dtype)
        return y.astype(x4.dtype, copy=False), mean.astype(sd), var.astype(sd)

    def group_normalize_backward(self, dy4, x4, mean, var, eps, weight, center):
        wt = _work(x4.dtype)
        m = x4.shape[2] * x4.shape[3]
        rstd = (1.0 / np.sqrt(var.astype(_F64) + eps)).astype(wt)[:, :, None, None]
        xhat = x4.astype(wt)
        if center:
            xhat = xhat - mean.astype(wt)[:, :, None, None]
        xhat = xhat * rstd
        dyw = dy4.astype(wt)
        gd = _gdt(weight, x4)
        dweight = _sum("ngdl,ngdl->gd", dyw, xhat).astype(gd)
        dbias = _sum("ngdl->gd", dyw).astype(gd)
        g = dyw if weight is None else dyw * weight.astype(wt)[None, :, :, None]
        s_gx = (_sum("ngdl,ngdl->ng", g, xhat) / m).astype(wt)[:, :, None, None]
        dx = g - xhat * s_gx
        if center:
            dx -= (_sum("ngdl->ng", g) / m).astype(wt)[:, :, None, None]
        dx *= rstd
        return dx.astype(x4.dtype, copy=False), dweight, dbias

    # ------------------------------------------------------------------ row view (R, K)
    def standardize_rows(self, x2, eps, ddof, eps_in_root):
        k = x2.shape[1]
        shift = _shift(x2[:, 0])
        mean = shift + _sum("rk->r", x2.astype(_F64) - shift[:, None]) / k
        c = x2.astype(_F64) - mean[:, None]
        v = _sum("rk,rk->r", c, c) / (k - ddof)
        denom = np.sqrt(v + eps) if eps_in_root else np.sqrt(v) + eps
        y = c * (1.0 / denom)[:, None]
        sd = _stat(x2.dtype)
        return y.astype(x2.dtype), mean.astype(sd), denom.astype(sd)

    def standardize_rows_backward(self, dy2, x2, mean, denom, eps, ddof, eps_in_root):
        k = x2.shape[1]
        n = k - ddof
        d = denom.astype(_F64)
        c = x2.astype(_F64) - mean.astype(_F64)[:, None]
        s = _sum("rk,rk->r", dy2, c)
        if eps_in_root:
            coef = s / (n * d**3)
        else:
            root = np.sqrt(_sum("rk,rk->r", c, c) / n)
            safe = np.where(root > 0, root, 1.0)
            coef = np.where(root > 0, s / (n * safe * d**2), 0.0)
        dy_mean = _sum("rk->r", dy2) / k
        dx = (dy2.astype(_F64) - dy_mean[:, None]) * (1.0 / d)[:, None] - c * coef[:, None]
        return dx.astype(x2.dtype)

    # ------------------------------------------------------------------ dropout
    def dropout(self, x, p, seed):
        if p <= 0.0:
            return np.array(x, copy=True)
        if p >= 1.0:
            return np.zeros(x.shape, dtype=x.dtype)
        keep = _keep_mask(x.shape, p, seed)
        wt = _work(x.dtype)
        y = np.where(keep, x.astype(wt) * wt(1.0 / (1.0 - p)), wt(0.0))
        return y.astype(x.dtype, copy=False)


# ---------------------------------------------------------------------- dropout mask
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64, elementwise on uint64 (wrap-around is the point)."""
    z = z + _GOLDEN
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def _keep_mask(shape: tuple[int, ...], p: float, seed: int) -> np.ndarray:
    """Element i (flat C-order index) is kept when mix(seed ^ mix(i)) >> 40 >= ceil(p * 2**24)."""
    threshold = np.uint64(int(np.ceil(p * (1 << 24))))
    n = int(np.prod(shape, dtype=np.int64))
    with np.errstate(over="ignore"):
        h = _mix(np.uint64(seed) ^ _mix(np.arange(n, dtype=np.uint64)))
    return ((h >> np.uint64(40)) >= threshold).reshape(shape)
