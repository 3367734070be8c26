"""The Numba CPU backend: plain ``@njit`` kernels, one ``prange`` loop over blocks of work each,
compiled on first use and cached on disk.

This module imports without numba (``is_available`` then says why it cannot run); the kernel
modules (``_channel``, ``_cols``, ``_group``, ``_rows``), which import numba, are loaded on the
first kernel call, and each kernel compiles when it is first called (one specialization per dtype
and array layout), so using LayerNorm never compiles the BatchNorm kernels. ``_plan`` decides how a call
cuts its work (small inputs: one block, on the calling thread); ``_jit`` how kernels compile.
float16 input is widened to float32 at the boundary and the result rounded back; statistics are
summed in float64 for every dtype (docs/backends.md).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import numpy as np

from normcore.backend import KERNELS, Availability, Backend, dropout_scale, dropout_threshold

from . import _layer, _plan
from ._pool import empty as _out
from ._pool import empty_like as _out_like

_F64 = np.float64
_MASK64 = (1 << 64) - 1
_NONE = np.empty(0)  # "no weight", "no bias", "no running statistics"

_MODULES: dict[str, Any] = {}


def _kernels(name: str) -> Any:
    """Import a kernel module on first use (it imports numba; compiling happens per kernel)."""
    mod = _MODULES.get(name)
    if mod is None:
        _layer.settle()  # the threading layer up before any kernel loads (see _layer)
        mod = _MODULES[name] = importlib.import_module(f"normcore_numba.{name}")
    return mod


def _plan_for(view: str, x: np.ndarray, exact: bool = True) -> _plan.Plan:
    """The plan for ``x`` on ``view``; ``exact=False`` where the results do not depend on the
    blocks (see ``_plan.threads``)."""
    return _plan.plan(view, x.shape, x.strides, x.itemsize, _plan.threads(x.size, exact))


def _widen(a: Any) -> tuple[np.ndarray, np.dtype]:
    """(a as the kernels take it, a's dtype): float16 is computed in float32; other supported
    dtypes go in as they are."""
    a = np.asarray(a)
    dt = a.dtype
    return (a.astype(np.float32) if dt.type is np.float16 else a), dt


def _narrow(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A float32 result of float16 input rounded back (other dtypes as they are)."""
    return a if a.dtype == dtype else a.astype(dtype)


def _stat_dtype(dtype: np.dtype) -> type:
    return _F64 if dtype.type is _F64 else np.float32



def _f64(a: Any) -> np.ndarray:
    """A float64 contiguous copy or view; None is the empty "absent" vector."""
    if a is None:
        return _NONE
    if type(a) is np.ndarray and a.dtype == _F64 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=_F64)


def _floats(a: Any) -> np.ndarray:
    """Statistics and per-channel parameters as the kernels read them: a contiguous float32 or
    float64 array as it is (the kernels read it as float64), anything else as float64; None is
    the empty "absent" vector. (A conversion costs about a microsecond a call.)"""
    if type(a) is np.ndarray and (a.dtype == _F64 or a.dtype == np.float32) and a.flags.c_contiguous:
        return a
    return _f64(a)


def _as(a: Any, dtype: np.dtype) -> np.ndarray:
    """A parameter as a contiguous array of ``dtype`` (no copy when it already is one)."""
    if type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=dtype)


def _partials(nblk: int, *shape: int) -> tuple[np.ndarray, np.ndarray]:
    """Two zeroed float64 (nblk, *shape) arrays: each block's partial sums."""
    return np.zeros((nblk, *shape)), np.zeros((nblk, *shape))


def _grad_dtype(weight: Any, orig: np.dtype) -> np.dtype:
    return orig if weight is None else np.asarray(weight).dtype


def _cols(a: np.ndarray, p: _plan.Plan) -> np.ndarray:
    """The (R, Q) column view of (N, C, L) (see _channel): rows of C channels (inner 1) or
    (C, L) slabs (inner L), with ``p.pieces`` adjacent rows taken as one (a copy where no view
    exists)."""
    n, c, l_ = a.shape
    a2 = a.transpose(0, 2, 1).reshape(n * l_, c) if p.inner == 1 else a.reshape(n, c * l_)
    r = p.pieces
    return a2 if r == 1 else a2.reshape(a2.shape[0] // r, r * a2.shape[1])


def _cols_out(shape: tuple[int, int, int], dtype: np.dtype, p: _plan.Plan
              ) -> tuple[np.ndarray, np.ndarray]:
    """A new output for the column kernels: its column view (as ``_cols`` cuts it) and its
    (N, C, L) view (channels-last for rows of C channels)."""
    n, c, l_ = shape
    flat = _out((n * c * l_,), dtype)
    y3 = flat.reshape(n, l_, c).transpose(0, 2, 1) if p.inner == 1 else flat.reshape(n, c, l_)
    return flat.reshape(-1, p.pieces * (c if p.inner == 1 else c * l_)), y3


def _group_view(a: np.ndarray, p: _plan.Plan) -> np.ndarray:
    """(N, G, D, L) as the group kernels take it: (N, G, D * L) for ``flat``, else as it is."""
    if p.layout != "flat":
        return a
    n, g, d, l_ = a.shape
    return a[:, :, :, 0] if l_ == 1 else a.reshape(n, g, d * l_)


def _group_param(a: Any, x: np.ndarray, p: _plan.Plan, fill: float) -> np.ndarray:
    """A weight or bias as the group kernels take it, in x's dtype (the maps run in it): (G, D)
    for ``lines``, (G, D * L) for ``flat`` (repeated along L); ``fill`` where it is None."""
    _, g, d, l_ = x.shape
    if a is None:
        a = np.full((g, d), fill, x.dtype)
    else:
        a = _as(a, x.dtype)
        if a.shape != (g, d):
            a = a.reshape(g, d)
    return a if l_ == 1 or p.layout != "flat" else np.repeat(a, l_, axis=1)


class NumbaBackend(Backend):
    """Parallel Numba CPU kernels (see :mod:`normcore.backend` for the contract)."""

    name = "numba"
    device = "cpu"
    kernels = frozenset(KERNELS) | {"channel_moments_normalize", "channel_moments_normalize_update",
                                    "channel_backward_sums"}

    # -------------------------------------------------------------- housekeeping
    def is_available(self) -> Availability:
        try:
            import numba
        except Exception as exc:  # ImportError, or a broken llvmlite install
            return Availability(False, f"numba cannot be imported: {exc}")
        if numba.config.DISABLE_JIT:
            return Availability(False, "NUMBA_DISABLE_JIT is set: the numba backend's kernels "
                                       "would run as Python loops, thousands of times slower "
                                       "than the numpy backend (unset it to use this backend)")
        return Availability(True)

    def version(self) -> str:
        try:
            import numba
        except Exception:
            return ""
        return str(numba.__version__)

    def asarray(self, obj: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(obj, dtype=dtype)

    def to_numpy(self, arr: Any) -> np.ndarray:
        return np.asarray(arr)

    # -------------------------------------------------------------- channel view (N, C, L)
    def channel_moments(self, x3):
        mean, var = self._forward(x3, None, None, None, None, False)[1:3]
        return mean, var

    def channel_normalize(self, x3, mean, var, eps, weight, bias):
        x, orig = _widen(x3)
        p = _plan_for("channel", x)
        k = _kernels("_cols" if p.layout == "cols" else "_channel")
        args = (_floats(mean), _floats(var), float(eps), _floats(weight), _floats(bias))
        if p.layout == "cols":
            y2, y = _cols_out(x.shape, x.dtype, p)
            x2 = _cols(x, p)
            k.normalize_cols.run(p.nblk, x2, p.inner, *args, y2, np.empty((3, x2.shape[1]), x.dtype))
        else:
            y = _out_like(x)
            k.normalize_ncl.run(p.nblk, x, p.pieces, *args, y, np.empty((3, x.shape[1]), x.dtype))
        return _narrow(y, orig)

    def channel_moments_normalize(self, x3, eps, weight, bias):
        return self._forward(x3, eps, weight, bias, None, True)[:3]

    def channel_moments_normalize_update(self, x3, eps, weight, bias, running_mean, running_var,
                                         momentum, var_correction):
        return self._forward(x3, eps, weight, bias,
                             (running_mean, running_var, momentum, var_correction), True)

    def _forward(self, x3, eps, weight, bias, running, normalize):
        """(y, mean, var, new running mean, new running var): the statistics, y when
        ``normalize`` (else None), the running update when ``running`` (running_mean,
        running_var, momentum, var_correction) is given (else None, None); one kernel call."""
        x, orig = _widen(x3)
        p = _plan_for("channel", x)
        k = _kernels("_cols" if p.layout == "cols" else "_channel")
        narrow = x.dtype != _F64
        if running is None:
            upd = (_NONE, _NONE, 0.0, 1.0, _NONE, _NONE)
        else:
            rm, rv, momentum, corr = running
            c = x.shape[1]
            rm, rv = _floats(rm), _floats(rv)
            upd = (rm, rv, float(momentum), float(corr), np.empty(c, rm.dtype), np.empty(c, rv.dtype))
        eps = 0.0 if eps is None else float(eps)
        if p.layout == "cols":
            y2, y = (_cols_out(x.shape, x.dtype, p) if normalize
                     else (np.empty((0, 0), x.dtype), None))
            x2 = _cols(x, p)
            mean, var = k.forward_cols.run(p.nblk, x2, p.inner, x.shape[1], eps, _floats(weight),
                                           _floats(bias), y2,
                                           narrow, *upd, *_partials(p.nblk, x2.shape[1]),
                                           np.empty((3, x2.shape[1]), x.dtype), _plan.COLS_TILE)
        elif p.layout == "chan":
            y = _out_like(x) if normalize else np.empty((0, 0, 0), x.dtype)
            mean, var = np.empty(x.shape[1]), np.empty(x.shape[1])
            k.forward_chan.run(p.nblk, x, eps, _floats(weight), _floats(bias), y, narrow, *upd, mean, var)
            y = y if normalize else None
        else:
            y = _out_like(x) if normalize else np.empty((0, 0, 0), x.dtype)
            mean, var = k.forward_ncl.run(p.nblk, x, p.pieces, eps, _floats(weight), _floats(bias), y,
                                          narrow, *upd, *_partials(p.nblk, x.shape[1]),
                                          np.empty((3, x.shape[1]), x.dtype))
            y = y if normalize else None
        sd = _stat_dtype(x.dtype)
        out = (None if y is None else _narrow(y, orig), mean.astype(sd, copy=False),
               var.astype(sd, copy=False))
        if running is None:
            return (*out, None, None)
        return (*out, upd[4].astype(np.asarray(running[0]).dtype, copy=False),
                upd[5].astype(np.asarray(running[1]).dtype, copy=False))

    def channel_normalize_backward(self, dy3, x3, mean, var, eps, weight, batch_stats):
        orig = np.asarray(x3).dtype
        dx, dweight, dbias, _ = self._backward(dy3, x3, mean, var, eps, weight, batch_stats, True)
        gd = _grad_dtype(weight, orig)
        return _narrow(dx, orig), dweight.astype(gd, copy=False), dbias.astype(gd, copy=False)

    def channel_backward_sums(self, dy3, x3, mean, var, eps):
        _, sum_dy_xhat, sum_dy, _ = self._backward(dy3, x3, mean, var, eps, None, False, False)
        sd = _stat_dtype(np.asarray(x3).dtype)
        return sum_dy.astype(sd, copy=False), sum_dy_xhat.astype(sd, copy=False)

    def _backward(self, dy3, x3, mean, var, eps, weight, batch_stats, want_dx):
        """(dx or None, dweight, sum(dy), sum(dy * (x - mean))), the last three float64."""
        x = _widen(x3)[0]
        dy = _widen(dy3)[0]
        p = _plan_for("channel", x)
        k = _kernels("_cols" if p.layout == "cols" else "_channel")
        args = (_floats(mean), _floats(var), float(eps), _floats(weight), bool(batch_stats))
        if p.layout == "cols":
            dx2, dx = (_cols_out(x.shape, x.dtype, p) if want_dx
                       else (np.empty((0, 0), x.dtype), None))
            x2 = _cols(x, p)
            dweight, s_dy, s_dyx = k.backward_cols.run(p.nblk, _cols(dy, p), x2, p.inner,
                                                       *args, dx2, *_partials(p.nblk, x2.shape[1]),
                                                       np.empty((4, x2.shape[1]), x.dtype),
                                                       _plan.COLS_TILE)
        elif p.layout == "chan":
            dx = _out_like(x) if want_dx else np.empty((0, 0, 0), x.dtype)
            dweight, s_dy, s_dyx = (np.empty(x.shape[1]) for _ in range(3))
            k.backward_chan.run(p.nblk, dy, x, *args, dx, dweight, s_dy, s_dyx)
        else:
            dx = _out_like(x) if want_dx else np.empty((0, 0, 0), x.dtype)
            dweight, s_dy, s_dyx = k.backward_ncl.run(p.nblk, dy, x, p.pieces, *args, dx,
                                                      *_partials(p.nblk, x.shape[1]),
                                                      np.empty((4, x.shape[1]), x.dtype))
        return dx, dweight, s_dy, s_dyx

    def running_update(self, running_mean, running_var, mean, var, momentum, var_correction):
        m = float(momentum)
        new_mean = (1.0 - m) * _f64(running_mean) + m * np.asarray(mean, _F64).mean(axis=0)
        new_var = ((1.0 - m) * _f64(running_var)
                   + m * float(var_correction) * np.asarray(var, _F64).mean(axis=0))
        return (new_mean.astype(np.asarray(running_mean).dtype, copy=False),
                new_var.astype(np.asarray(running_var).dtype, copy=False))

    # -------------------------------------------------------------- group view (N, G, D, L)
    def group_normalize(self, x4, weight, bias, eps, center):
        k = _kernels("_group")
        x, orig = _widen(x4)
        p = _plan_for("group", x, exact=False)  # each row's own statistics
        xv, w, b = _group_view(x, p), _group_param(weight, x, p, 1.0), _group_param(bias, x, p, 0.0)
        y = _out_like(x)
        kernel = k.forward_flat if p.layout == "flat" else k.forward_lines
        sd = _stat_dtype(x.dtype)  # the kernel rounds the float64 statistics as it stores them
        mean, var = np.empty(x.shape[:2], sd), np.empty(x.shape[:2], sd)
        kernel.run(p.nblk, xv, w, b, float(eps), bool(center), y.reshape(xv.shape), mean, var)
        return _narrow(y, orig), mean, var

    def group_normalize_backward(self, dy4, x4, mean, var, eps, weight, center):
        k = _kernels("_group")
        x, orig = _widen(x4)
        dy = _widen(dy4)[0]
        n, g, d, l_ = x.shape
        p = _plan_for("group", x)
        xv, w = _group_view(x, p), _group_param(weight, x, p, 1.0)
        dyv = _group_view(dy, p)
        dx = _out_like(x)
        kernel = ({1: k.backward_rows, 4: k.backward_flat}[p.pieces] if p.layout == "flat"
                  else k.backward_lines)
        gd = _grad_dtype(weight, orig)
        folded = w.shape != (g, d)  # flat rows of D * L: the totals are summed over L after
        direct = not folded and gd in (_F64, np.float32)  # the kernel stores them in gd
        dweight, dbias = (np.empty(w.shape, gd if direct else _F64) for _ in range(2))
        kernel.run(p.nblk, dyv, xv, _floats(mean), _floats(var), float(eps), w, bool(center),
                   dx.reshape(xv.shape), *_partials(p.nblk, *w.shape), dweight, dbias)
        if folded:
            dweight = dweight.reshape(g, d, l_).sum(axis=2)
            dbias = dbias.reshape(g, d, l_).sum(axis=2)
        return _narrow(dx, orig), dweight.astype(gd, copy=False), dbias.astype(gd, copy=False)

    # -------------------------------------------------------------- row view (R, K)
    def standardize_rows(self, x2, eps, ddof, eps_in_root):
        k = _kernels("_rows")
        x, orig = _widen(x2)
        y = _out_like(x)
        sd = _stat_dtype(x.dtype)
        mean, denom = np.empty(x.shape[0], sd), np.empty(x.shape[0], sd)
        k.standardize.run(_plan_for("rows", x, False).nblk, x, float(eps), int(ddof), bool(eps_in_root),
                          y, mean, denom)
        return _narrow(y, orig), mean, denom

    def standardize_rows_backward(self, dy2, x2, mean, denom, eps, ddof, eps_in_root):
        k = _kernels("_rows")
        x, orig = _widen(x2)
        dy = _widen(dy2)[0]
        dx = _out_like(x)
        k.standardize_backward.run(_plan_for("rows", x, False).nblk, dy, x, _floats(mean), _floats(denom),
                                   int(ddof), bool(eps_in_root), dx)
        return _narrow(dx, orig)

    # -------------------------------------------------------------- dropout
    def dropout(self, x, p, seed):
        x = np.asarray(x)
        if p <= 0.0:
            return x.copy()
        if p >= 1.0:
            return np.zeros(x.shape, dtype=x.dtype)
        k = _kernels("_rows")
        flat = np.ascontiguousarray(x).reshape(-1)  # C-order flat index, whatever x's strides
        if flat.dtype == np.float16:
            # computed and stored in float64, then rounded once to float16 (as the reference)
            flat = flat.astype(np.float32)
            out = _out(flat.shape, _F64)
        else:
            out = _out(flat.shape, flat.dtype)
        nblk = _plan.plan("flat", flat.shape, flat.strides, flat.itemsize,
                          _plan.threads(flat.size, exact=False)).nblk
        k.dropout.run(nblk, flat, np.uint64(seed & _MASK64), np.uint64(dropout_threshold(p)),
                      float(dropout_scale(p)), out)
        return out.astype(x.dtype, copy=False).reshape(x.shape)


def _one_thread_from_now() -> None:
    """In a child forked after GNU OpenMP started (see _layer): every input runs as one block on
    the calling thread."""
    _plan.SERIAL_MAX = sys.maxsize


_layer.guard(NumbaBackend, sorted(NumbaBackend.kernels), _one_thread_from_now)
