"""Weight-standardization kernels of the numba-cuda backend: rows ``(R, K)`` standardized by their
own mean and standard deviation, ``y = (x - mean) / denom``.

``denom`` is ``sqrt(var + eps)`` (``eps_in_root``) or ``sqrt(var) + eps``, with ``var`` the sum of
squares over ``nd = K - ddof``. Launched like the group-view rows
(:func:`normcore_cuda._launch.row_launch`): a row group of ``tpr`` threads a row, a fixed grid
striding over the rows ``niter`` times.
"""

from __future__ import annotations

import math

from numba import cuda

from ._reduce import _group_sum, _group_sum2, row_group, shift_sample


def build(acc_t) -> dict:
    """The weight-standardization kernels accumulating in ``acc_t``, by name."""
    _sample = shift_sample(acc_t)

    @cuda.jit
    def rows_forward(x, y, mean_o, denom_o, R, K, nd, eps, eps_in_root, tpr, niter):
        """Weight standardization forward: ``y = (x - mean) / denom`` and each row's ``mean``, ``denom``.

        A row group of ``tpr`` threads a row, as in the group view. Pass 1 sums ``x - k`` about a
        sample ``k`` of the row -> ``mean``; pass 2 sums ``(x - mean)**2`` -> ``var`` over ``nd``
        (:func:`_group_sum`); pass 3 writes ``y``. Thread 0 of the group writes the row's statistics.

        Traffic: ``x`` read three times (re-reads from cache while the row fits), ``y`` written once,
        two statistics a row.
        """
        sh = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        one = acc_t(1.0)
        gid, ngroups, lr = row_group(tpr)
        for it in range(niter):
            r = gid + it * ngroups
            hi = K if r < R else 0
            base = r * K
            k = _sample(x, base, r < R, zero)
            s = zero
            for i in range(lr, hi, tpr):
                s += acc_t(x[base + i]) - k
            mean = k + _group_sum(s, sh, tpr, zero) / acc_t(K)
            q = zero
            for i in range(lr, hi, tpr):
                dv = acc_t(x[base + i]) - mean
                q += dv * dv
            v = _group_sum(q, sh, tpr, zero) / nd
            if eps_in_root:
                den = math.sqrt(v + eps)
            else:
                den = math.sqrt(v) + eps
            if r < R and lr == 0:
                mean_o[r] = mean
                denom_o[r] = den
            inv = one / den
            for i in range(lr, hi, tpr):
                y[base + i] = (acc_t(x[base + i]) - mean) * inv

    @cuda.jit
    def rows_backward(dy, x, mean, denom, dx, R, K, nd, eps_in_root, tpr, niter):
        """Weight standardization backward: ``dx`` of each row.

        A row group a row. Pass 1 sums ``dy``, ``dy * c`` and ``c * c`` (``c = x - mean``) over the row
        (:func:`_group_sum2`, and :func:`_group_sum` for ``c * c``, needed only when ``eps`` is outside
        the root); pass 2 writes ``dx = (dy - mean(dy)) / denom - c * coef``, ``coef`` the derivative
        through ``denom``.

        Traffic: ``dy`` and ``x`` read twice each (the second time from cache while the row fits),
        ``dx`` written once, two statistics a row read.
        """
        sh = cuda.shared.array(32, acc_t)
        sh2 = cuda.shared.array(32, acc_t)
        zero = acc_t(0.0)
        one = acc_t(1.0)
        gid, ngroups, lr = row_group(tpr)
        inv_k = one / acc_t(K)
        for it in range(niter):
            r = gid + it * ngroups
            valid = r < R
            hi = K if valid else 0
            base = r * K
            mu = zero
            d = one
            if valid:
                mu = acc_t(mean[r])
                d = acc_t(denom[r])
            sdy = zero
            sdc = zero
            scc = zero
            for i in range(lr, hi, tpr):
                cv = acc_t(x[base + i]) - mu
                dyv = acc_t(dy[base + i])
                sdy += dyv
                sdc += dyv * cv
                scc += cv * cv
            sdy, sdc = _group_sum2(sdy, sdc, sh, sh2, tpr, zero)
            coef = zero
            if eps_in_root:
                coef = sdc / (nd * d * d * d)
            else:
                scc = _group_sum(scc, sh, tpr, zero)
                root = math.sqrt(scc / nd)
                if root > zero:
                    coef = sdc / (nd * root * d * d)
            mdy = sdy * inv_k
            inv_d = one / d
            for i in range(lr, hi, tpr):
                cv = acc_t(x[base + i]) - mu
                dx[base + i] = (acc_t(dy[base + i]) - mdy) * inv_d - cv * coef

    return {"rows_forward": rows_forward, "rows_backward": rows_backward}
