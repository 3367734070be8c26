"""The NumPy reference backend. Written for clarity; it is the oracle every other backend is tested
against. Reductions run in float64 whatever the input dtype, and results are rounded once at the end.
Means are taken about one sample of each channel, row or group (``_shifted_mean``), so a constant
one has exactly its value as mean and 0 as variance, and normalizes to zeros.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normcore.backend import KERNELS, Backend, dropout_keep_mask, dropout_scale

_ACC = np.float64


def _shifted_mean(xd: np.ndarray, k: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """The mean over ``axis`` as ``k + mean(x - k)``, ``k`` holding one sample of each slice
    (``k`` keeps the reduced axes as length 1), or 0 where that sample is not finite.

    Summing ``x - k`` rather than x makes the mean of a constant slice exactly the constant
    (``np.mean`` of a float64 column of 1.7e18 is not: its variance came out as the square of
    the rounding and the column normalized to 1.0 instead of 0), and an infinite first sample
    is not subtracted from itself (inf - inf): the mean stays inf, as torch's does."""
    k = np.where(np.isfinite(k), k, 0.0)
    return (k + (xd - k).mean(axis=axis, keepdims=True)).squeeze(axis)


def _stat_dtype(dtype: np.dtype) -> type:
    return np.float64 if dtype == np.float64 else np.float32


def _grad_dtype(weight: np.ndarray | None, x: np.ndarray) -> np.dtype:
    return x.dtype if weight is None else weight.dtype


class NumpyBackend(Backend):
    """Reference kernels in plain NumPy (see :mod:`normcore.backend` for the contract)."""

    name = "numpy"
    #: Every kernel, and SyncBatchNorm's two backward kernels natively (the reference for them).
    kernels = frozenset(KERNELS) | {"channel_backward_sums", "channel_normalize_backward_from_sums"}

    def version(self) -> str:
        return np.__version__

    def asarray(self, obj: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(obj, dtype=dtype)

    def to_numpy(self, arr: Any) -> np.ndarray:
        return np.asarray(arr)

    # -------------------------------------------------------------- channel view (N, C, L)
    def channel_moments(self, x3):
        xd = x3.astype(_ACC)
        mean = _shifted_mean(xd, xd[:1, :, :1], (0, 2))
        var = ((xd - mean[None, :, None]) ** 2).mean(axis=(0, 2))
        sd = _stat_dtype(x3.dtype)
        return mean.astype(sd), var.astype(sd)

    def channel_normalize(self, x3, mean, var, eps, weight, bias):
        scale, shift = _fold(mean, var, eps, weight, bias)
        y = x3.astype(_ACC) * scale[None, :, None] + shift[None, :, None]
        return y.astype(x3.dtype)

    def channel_normalize_backward(self, dy3, x3, mean, var, eps, weight, batch_stats):
        dyd, xd = dy3.astype(_ACC), x3.astype(_ACC)
        rstd = 1.0 / np.sqrt(var.astype(_ACC) + eps)
        xhat = (xd - mean.astype(_ACC)[None, :, None]) * rstd[None, :, None]
        dbias = dyd.sum(axis=(0, 2))
        dweight = (dyd * xhat).sum(axis=(0, 2))
        w = np.ones_like(rstd) if weight is None else weight.astype(_ACC)
        g = dyd * w[None, :, None]
        if batch_stats:
            m = x3.shape[0] * x3.shape[2]
            g = g - g.sum(axis=(0, 2))[None, :, None] / m - xhat * (
                (g * xhat).sum(axis=(0, 2))[None, :, None] / m
            )
        dx = g * rstd[None, :, None]
        gd = _grad_dtype(weight, x3)
        return dx.astype(x3.dtype), dweight.astype(gd), dbias.astype(gd)

    def channel_backward_sums(self, dy3, x3, mean, var, eps):
        dyd = dy3.astype(_ACC)
        rstd = 1.0 / np.sqrt(var.astype(_ACC) + eps)
        xhat = (x3.astype(_ACC) - mean.astype(_ACC)[None, :, None]) * rstd[None, :, None]
        sd = _stat_dtype(x3.dtype)
        return dyd.sum(axis=(0, 2)).astype(sd), (dyd * xhat).sum(axis=(0, 2)).astype(sd)

    def channel_normalize_backward_from_sums(self, dy3, x3, mean, var, eps, weight, sum_dy,
                                             sum_dy_xhat, count):
        rstd = 1.0 / np.sqrt(var.astype(_ACC) + eps)
        xhat = (x3.astype(_ACC) - mean.astype(_ACC)[None, :, None]) * rstd[None, :, None]
        scale = rstd if weight is None else rstd * weight.astype(_ACC)
        mean_dy = sum_dy.astype(_ACC) / count
        mean_dy_xhat = sum_dy_xhat.astype(_ACC) / count
        dx = (dy3.astype(_ACC) - mean_dy[None, :, None] - xhat * mean_dy_xhat[None, :, None]) \
            * scale[None, :, None]
        return dx.astype(x3.dtype)

    def running_update(self, running_mean, running_var, mean, var, momentum, var_correction):
        batch_mean = mean.astype(_ACC).mean(axis=0)
        batch_var = var.astype(_ACC).mean(axis=0) * var_correction
        new_mean = (1.0 - momentum) * running_mean.astype(_ACC) + momentum * batch_mean
        new_var = (1.0 - momentum) * running_var.astype(_ACC) + momentum * batch_var
        return new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)

    # -------------------------------------------------------------- group view (N, G, D, L)
    def group_normalize(self, x4, weight, bias, eps, center):
        xd = x4.astype(_ACC)
        if center:
            mean = _shifted_mean(xd, xd[:, :, :1, :1], (2, 3))
            var = ((xd - mean[:, :, None, None]) ** 2).mean(axis=(2, 3))
        else:
            mean = np.zeros(x4.shape[:2], dtype=_ACC)
            var = (xd * xd).mean(axis=(2, 3))
        rstd = 1.0 / np.sqrt(var + eps)
        y = (xd - mean[:, :, None, None]) * rstd[:, :, None, None]
        if weight is not None:
            y = y * weight.astype(_ACC)[None, :, :, None]
        if bias is not None:
            y = y + bias.astype(_ACC)[None, :, :, None]
        sd = _stat_dtype(x4.dtype)
        return y.astype(x4.dtype), mean.astype(sd), var.astype(sd)

    def group_normalize_backward(self, dy4, x4, mean, var, eps, weight, center):
        dyd, xd = dy4.astype(_ACC), x4.astype(_ACC)
        rstd = (1.0 / np.sqrt(var.astype(_ACC) + eps))[:, :, None, None]
        xhat = (xd - mean.astype(_ACC)[:, :, None, None]) * rstd
        dweight = (dyd * xhat).sum(axis=(0, 3))
        dbias = dyd.sum(axis=(0, 3))
        g = dyd if weight is None else dyd * weight.astype(_ACC)[None, :, :, None]
        m = x4.shape[2] * x4.shape[3]
        dx = g - xhat * ((g * xhat).sum(axis=(2, 3), keepdims=True) / m)
        if center:
            dx = dx - g.sum(axis=(2, 3), keepdims=True) / m
        dx = dx * rstd
        gd = _grad_dtype(weight, x4)
        return dx.astype(x4.dtype), dweight.astype(gd), dbias.astype(gd)

    # -------------------------------------------------------------- row view (R, K)
    def standardize_rows(self, x2, eps, ddof, eps_in_root):
        xd = x2.astype(_ACC)
        mean = _shifted_mean(xd, xd[:, :1], (1,))
        v = ((xd - mean[:, None]) ** 2).sum(axis=1) / (x2.shape[1] - ddof)
        denom = np.sqrt(v + eps) if eps_in_root else np.sqrt(v) + eps
        y = (xd - mean[:, None]) / denom[:, None]
        sd = _stat_dtype(x2.dtype)
        return y.astype(x2.dtype), mean.astype(sd), denom.astype(sd)

    def standardize_rows_backward(self, dy2, x2, mean, denom, eps, ddof, eps_in_root):
        dyd, xd = dy2.astype(_ACC), x2.astype(_ACC)
        d = denom.astype(_ACC)[:, None]
        c = xd - mean.astype(_ACC)[:, None]
        n = x2.shape[1] - ddof
        s = (dyd * c).sum(axis=1, keepdims=True)
        if eps_in_root:
            coef = s / (n * d**3)
        else:
            root = np.sqrt((c * c).sum(axis=1, keepdims=True) / n)
            with np.errstate(divide="ignore", invalid="ignore"):
                coef = np.where(root > 0, s / (n * root * d**2), 0.0)
        dx = (dyd - dyd.mean(axis=1, keepdims=True)) / d - c * coef
        return dx.astype(x2.dtype)

    # -------------------------------------------------------------- dropout
    def dropout(self, x, p, seed):
        keep = dropout_keep_mask(x.shape, p, seed)
        return (x.astype(_ACC) * keep * dropout_scale(p)).astype(x.dtype)


def _fold(mean, var, eps, weight, bias):
    """Fold normalization and affine into one per-channel scale and shift (float64)."""
    rstd = 1.0 / np.sqrt(var.astype(_ACC) + eps)
    scale = rstd if weight is None else rstd * weight.astype(_ACC)
    shift = -mean.astype(_ACC) * scale
    if bias is not None:
        shift = shift + bias.astype(_ACC)
    return scale, shift
