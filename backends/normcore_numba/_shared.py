"""The helpers that more than one kernel file compiles: sums about a shift, and the channel
view's statistics and map coefficients.

numba keys a cached kernel on its own source file only; this file's source is part of every
kernel's name (``_jit.TAG``), so an edit here recompiles every kernel (see ``_jit``). Kernel files
import compiled functions from here and from nowhere else.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import helper, inline


@inline
def shift(v):
    """A sample of the data as the shift of its sums: v itself, or 0 where v is not finite."""
    v = np.float64(v)
    return v if math.isfinite(v) else 0.0


@helper
def sums(v, k):
    """(sum(v - k), sum((v - k)**2)) in float64."""
    s1 = 0.0
    s2 = 0.0
    for i in range(v.shape[0]):
        t = np.float64(v[i]) - k
        s1 += t
        s2 += t * t
    return s1, s2


@helper
def dot(dy, x, mu):
    """(sum(dy), sum(dy * (x - mu))) in float64."""
    s1 = 0.0
    s2 = 0.0
    for i in range(dy.shape[0]):
        d = np.float64(dy[i])
        s1 += d
        s2 += d * (np.float64(x[i]) - mu)
    return s1, s2


@inline
def totals(p, inner, c_):
    """Per-channel totals of (nblk, Q) partials, column j in channel (j // inner) % C: block
    order, then column order."""
    out = np.empty(c_)
    period = c_ * inner
    for c in range(c_):
        t = 0.0
        for b in range(p.shape[0]):
            s = 0.0
            for base in range(0, p.shape[1], period):
                for i in range(inner):
                    s += p[b, base + c * inner + i]
            t += s
        out[c] = t
    return out


@inline
def moments(p1, p2, k, inner, m):
    """(mean, biased var) per channel, float64, from partials of sums shifted by k."""
    c_ = k.shape[0]
    s1 = totals(p1, inner, c_)
    s2 = totals(p2, inner, c_)
    mean = np.empty(c_)
    var = np.empty(c_)
    for c in range(c_):
        m1 = s1[c] / m
        mean[c] = k[c] + m1
        v = s2[c] / m - m1 * m1
        var[c] = 0.0 if v < 0.0 else v  # NaN stays NaN
    return mean, var


@inline
def narrowed(v, narrow):
    """v rounded to float32 where the statistics of this input are float32 (the layers then
    normalize with the statistics they return, as the reference does)."""
    return np.float64(np.float32(v)) if narrow else v


@inline
def affine(mean, var, eps, w, b, narrow):
    """(mu, a, s): y = (x - mu) * a + s per channel; w/b of size 0 mean 1 and 0."""
    c_ = mean.shape[0]
    mu = np.empty(c_)
    a = np.empty(c_)
    s = np.empty(c_)
    for c in range(c_):
        mu[c] = narrowed(mean[c], narrow)
        a[c] = 1.0 / math.sqrt(narrowed(var[c], narrow) + eps)
        if w.shape[0]:
            a[c] *= w[c]
        s[c] = b[c] if b.shape[0] else 0.0
    return mu, a, s


@inline
def update(mean, var, narrow, rm, rv, momentum, corr, out_m, out_v):
    """The running update into out_m/out_v (float64); nothing when rm is empty."""
    for c in range(rm.shape[0]):
        out_m[c] = (1.0 - momentum) * rm[c] + momentum * narrowed(mean[c], narrow)
        out_v[c] = (1.0 - momentum) * rv[c] + momentum * corr * narrowed(var[c], narrow)


@inline
def rounded(mu, a, k, cx):
    """cx[0] = mu rounded to x's dtype (cx's), m; cx[1] = a; cx[2] = k - a * (mu - m) for maps
    ``(x - mu) * a + k``, computed as ``(x - m) * a + (k - a * (mu - m))``: x - m is exact near
    the mean, so a mean that x's dtype cannot hold (float32 data at mean 1e4) keeps its float64
    accuracy. A constant channel (mu exactly its value) still maps to exactly k."""
    tp = cx.dtype.type
    for c in range(mu.shape[0]):
        m = tp(mu[c])
        cx[0, c] = m
        cx[1, c] = a[c]
        cx[2, c] = k[c] - a[c] * (mu[c] - np.float64(m))


@inline
def rounded_grad(mu, a, k2, k3, cx):
    """_rounded for dx = a * dy - k2 * (x - mu) - k3: cx = (m, a, k2, k3 - k2 * (mu - m))."""
    tp = cx.dtype.type
    for c in range(mu.shape[0]):
        m = tp(mu[c])
        cx[0, c] = m
        cx[1, c] = a[c]
        cx[2, c] = k2[c]
        cx[3, c] = k3[c] - k2[c] * (mu[c] - np.float64(m))


@inline
def grad_coefficients(s_dy, s_dyx, var, eps, w, m, batch_stats):
    """(dweight, a, k2, k3): dx = a * dy - k2 * (x - mu) - k3, from the per-channel sums of dy
    and dy * (x - mu); k2 = k3 = 0 for fixed statistics (evaluation)."""
    c_ = var.shape[0]
    dweight = np.empty(c_)
    a = np.empty(c_)
    k2 = np.empty(c_)
    k3 = np.empty(c_)
    for c in range(c_):
        k2[c] = 0.0
        k3[c] = 0.0
        rstd = 1.0 / math.sqrt(np.float64(var[c]) + eps)
        dweight[c] = s_dyx[c] * rstd
        a[c] = rstd * (w[c] if w.shape[0] else 1.0)
        if batch_stats:
            k2[c] = a[c] * rstd * rstd * s_dyx[c] / m
            k3[c] = a[c] * s_dy[c] / m
    return dweight, a, k2, k3
