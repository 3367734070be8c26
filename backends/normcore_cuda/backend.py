"""The numba-cuda backend: Numba ``@cuda.jit`` kernels on CuPy device arrays.

* Arrays: CuPy arrays. :meth:`CudaBackend.asarray` accepts anything exposing
  ``__cuda_array_interface__`` (CuPy arrays, torch CUDA tensors, Numba device arrays) without a
  copy, and host data (NumPy arrays, lists, ...) which it copies to the device.
* Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same kernels run on the host in
  Python threads, on plain NumPy arrays, without CuPy. That is how the backend is tested on
  machines without a GPU; it is slow and meant for small shapes only.
* Strides: the kernels index flat C-contiguous buffers. A non-contiguous input view is first made
  contiguous on the device (one copy, ``ascontiguousarray``); contiguous input is never copied.
* Kernel design: see :mod:`normcore_cuda._kernels`.

numba.cuda and CuPy are imported lazily, on first use, never when the package is imported.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Any

import numpy as np

from normcore.backend import Availability, Backend, dropout_scale, dropout_threshold


def _simulator() -> bool:
    """True when Numba's CUDA simulator is on (decided by numba's config once imported)."""
    try:
        from numba import config

        return bool(getattr(config, "ENABLE_CUDASIM", 0))
    except Exception:
        return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def _writable_host(a: np.ndarray) -> np.ndarray:
    """The simulator's device arrays write into the host arrays they wrap: a read-only input (a
    user's read-only view, a JAX array's memory) is copied first (what a real GPU does anyway)."""
    return a if a.flags.writeable else a.copy()


def _acc_dtype(dtype: Any) -> type:
    """Accumulator: float32 for float16 input, float64 for float32/float64 input."""
    return np.float32 if np.dtype(dtype) == np.float16 else np.float64


def _stat_dtype(dtype: Any) -> type:
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


class CudaBackend(Backend):
    """Numba CUDA kernels (see :mod:`normcore.backend` for the contract)."""

    name = "numba-cuda"
    device = "gpu"
    array_library = "cupy"  # (NumPy under the simulator)

    def __init__(self) -> None:
        self._kmod = None
        self._cp = None

    # -------------------------------------------------------------- housekeeping
    def is_available(self) -> Availability:
        if importlib.util.find_spec("numba") is None:
            return Availability(False, "numba-cuda is not installed (numba is missing)")
        try:
            from numba import cuda  # noqa: F401
        except Exception as exc:  # pragma: no cover - depends on the installation
            return Availability(False, f"numba-cuda is not installed or broken: {exc}")
        if importlib.util.find_spec("numba_cuda") is None and not _simulator():
            return Availability(False, "numba-cuda is not installed (pip install numba-cuda)")
        if _simulator():
            return Availability(True, "running in Numba's CUDA simulator")
        missing = []
        if importlib.util.find_spec("cupy") is None:
            missing.append("CuPy is not installed (pip install cupy-cuda12x)")
        try:
            has_device = bool(cuda.is_available())
            why = ""
        except Exception as exc:  # pragma: no cover
            has_device, why = False, f": {exc}"
        if not has_device:
            missing.append("no CUDA device (or driver) found" + why)
        if missing:
            return Availability(False, "; ".join(missing))
        return Availability(True)

    def version(self) -> str:
        try:
            from importlib.metadata import version

            v = f"numba-cuda {version('numba-cuda')}"
        except Exception:
            v = "numba-cuda (unknown version)"
        return v + (" (simulator)" if _simulator() else "")

    @property
    def _k(self):
        if self._kmod is None:
            from normcore_cuda import _kernels

            self._kmod = _kernels
        return self._kmod

    @property
    def _xp(self):
        if _simulator():
            return np
        if self._cp is None:
            import cupy

            self._cp = cupy
        return self._cp

    def asarray(self, obj: Any, dtype: Any = None) -> Any:
        if _simulator():
            if hasattr(obj, "copy_to_host"):  # a simulator device array
                obj = obj.copy_to_host()
            return np.asarray(obj, dtype=dtype)
        cp = self._xp
        if isinstance(obj, cp.ndarray) or hasattr(obj, "__cuda_array_interface__"):
            return cp.asarray(obj, dtype=dtype)
        return cp.asarray(np.asarray(obj), dtype=dtype)

    def from_dlpack(self, obj: Any) -> Any:
        """A torch/JAX/... array as a CuPy array: shared memory for a CUDA array, a copy to the
        device for host memory (host NumPy arrays under the simulator)."""
        if _simulator():
            return np.from_dlpack(obj)
        cp = self._xp
        if int(obj.__dlpack_device__()[0]) in (2, 13):  # kDLCUDA, kDLCUDAManaged
            return cp.from_dlpack(obj)
        return cp.asarray(np.from_dlpack(obj))

    def synchronize(self) -> None:
        """Wait for every kernel on the device (kernels launch asynchronously)."""
        if not _simulator():
            from numba import cuda

            cuda.synchronize()

    def to_numpy(self, arr: Any) -> np.ndarray:
        if _simulator():
            if hasattr(arr, "copy_to_host"):
                return arr.copy_to_host()
            return np.asarray(arr)
        cp = self._xp
        if isinstance(arr, cp.ndarray):
            return cp.asnumpy(arr)
        if hasattr(arr, "__cuda_array_interface__"):
            return cp.asnumpy(cp.asarray(arr))
        return np.asarray(arr)

    def is_native(self, arr: Any) -> bool:
        if _simulator():
            return isinstance(arr, np.ndarray)
        return isinstance(arr, self._xp.ndarray)

    def full(self, shape: tuple[int, ...], value: float, dtype: Any) -> Any:
        return self._xp.full(shape, value, dtype=dtype)

    def copy(self, arr: Any) -> Any:
        return self._xp.array(self.asarray(arr), copy=True)

    # -------------------------------------------------------------- helpers
    def _flat(self, a: Any) -> Any:
        """A flat C-contiguous view; copies (on the device) only a non-contiguous input (and,
        under the simulator, a read-only one: see :func:`_writable_host`)."""
        flat = self._xp.ascontiguousarray(a).reshape(-1)
        return _writable_host(flat) if _simulator() else flat

    def _empty(self, n: int, dtype: Any) -> Any:
        return self._xp.empty(n, dtype=dtype)

    def _opt(self, a: Any | None, acc: type) -> tuple[Any, bool]:
        if a is None:
            return self._xp.zeros(1, dtype=acc), False
        return self._flat(a), True

    @staticmethod
    def _blocks(n: int, threads: int) -> int:
        return max(1, -(-n // threads))

    # -------------------------------------------------------------- channel view (N, C, L)
    def channel_moments(self, x3):
        k = self._k
        n, c, length = x3.shape
        acc, sd = _acc_dtype(x3.dtype), _stat_dtype(x3.dtype)
        kk = k.get(acc)
        x = self._flat(x3)
        m = n * length
        s = k.slabs(c, m)
        ps, pq = self._empty(s * c, acc), self._empty(s * c, acc)
        _launch(kk.channel_partials, (c, s), k.RED_BLOCK)(x, n, c, length, s, ps, pq)
        mean, var = self._empty(c, sd), self._empty(c, sd)
        eb = k.ELT_BLOCK
        _launch(kk.channel_finish, self._blocks(c, eb), eb)(x, ps, pq, s, c, length, m, mean, var)
        return mean, var

    def channel_normalize(self, x3, mean, var, eps, weight, bias):
        k = self._k
        n, c, length = x3.shape
        acc = _acc_dtype(x3.dtype)
        kk = k.get(acc)
        w, has_w = self._opt(weight, acc)
        b, has_b = self._opt(bias, acc)
        scale, shift = self._empty(c, acc), self._empty(c, acc)
        eb = k.ELT_BLOCK
        _launch(kk.channel_fold, self._blocks(c, eb), eb)(
            self._flat(mean), self._flat(var), w, b, acc(eps), has_w, has_b, c, scale, shift
        )
        x = self._flat(x3)
        y = self._empty(x.size, x3.dtype)
        blocks, threads = k.channel_elt_launch(x.size, length)
        _launch(kk.channel_apply, blocks, threads)(x, y, scale, shift, x.size, c, length)
        return y.reshape(x3.shape)

    def channel_normalize_backward(self, dy3, x3, mean, var, eps, weight, batch_stats):
        k = self._k
        n, c, length = x3.shape
        acc = _acc_dtype(x3.dtype)
        kk = k.get(acc)
        gd = x3.dtype if weight is None else weight.dtype
        x, dy = self._flat(x3), self._flat(dy3)
        mean_f, var_f = self._flat(mean), self._flat(var)
        w, has_w = self._opt(weight, acc)
        m = n * length
        s = k.slabs(c, m)
        pw, pb = self._empty(s * c, acc), self._empty(s * c, acc)
        _launch(kk.channel_bwd_partials, (c, s), k.RED_BLOCK)(
            dy, x, mean_f, n, c, length, s, pw, pb
        )
        dw, db = self._empty(c, gd), self._empty(c, gd)
        k1, k2, k3 = (self._empty(c, acc) for _ in range(3))
        eb = k.ELT_BLOCK
        _launch(kk.channel_bwd_finish, self._blocks(c, eb), eb)(
            pw, pb, s, c, m, mean_f, var_f, w, acc(eps), has_w, bool(batch_stats),
            dw, db, k1, k2, k3,
        )
        dx = self._empty(x.size, x3.dtype)
        blocks, threads = k.channel_elt_launch(x.size, length)
        _launch(kk.channel_bwd_apply, blocks, threads)(
            dy, x, mean_f, k1, k2, k3, dx, x.size, c, length
        )
        return dx.reshape(x3.shape), dw, db

    def running_update(self, running_mean, running_var, mean, var, momentum, var_correction):
        k = self._k
        c = running_mean.shape[0]
        nb = mean.shape[0] if mean.ndim == 2 else 1
        out_m = self._empty(c, running_mean.dtype)
        out_v = self._empty(c, running_var.dtype)
        eb = k.ELT_BLOCK
        _launch(k.running_update_kernel, self._blocks(c, eb), eb)(
            self._flat(running_mean), self._flat(running_var), self._flat(mean),
            self._flat(var), nb, c, float(momentum), float(var_correction), out_m, out_v,
        )
        return out_m.reshape(running_mean.shape), out_v.reshape(running_var.shape)

    # -------------------------------------------------------------- group view (N, G, D, L)
    def group_normalize(self, x4, weight, bias, eps, center):
        k = self._k
        n, g, d, length = x4.shape
        acc, sd = _acc_dtype(x4.dtype), _stat_dtype(x4.dtype)
        kk = k.get(acc)
        rows, m = n * g, d * length
        x = self._flat(x4)
        w, has_w = self._opt(weight, acc)
        b, has_b = self._opt(bias, acc)
        y = self._empty(x.size, x4.dtype)
        mean, var = self._empty(rows, sd), self._empty(rows, sd)
        blocks, threads, tpr, niter = k.row_launch(rows, m)
        _launch(kk.group_forward, blocks, threads)(
            x, w, b, y, mean, var, rows, m, length, d, g, acc(eps), has_w, has_b,
            bool(center), tpr, niter,
        )
        return y.reshape(x4.shape), mean.reshape(n, g), var.reshape(n, g)

    def group_normalize_backward(self, dy4, x4, mean, var, eps, weight, center):
        k = self._k
        n, g, d, length = x4.shape
        acc = _acc_dtype(x4.dtype)
        kk = k.get(acc)
        gd = x4.dtype if weight is None else weight.dtype
        rows, m, c = n * g, d * length, g * d
        x, dy = self._flat(x4), self._flat(dy4)
        mean_f, var_f = self._flat(mean), self._flat(var)
        w, has_w = self._opt(weight, acc)
        dx = self._empty(x.size, x4.dtype)
        tpr = k.row_launch(rows, m)[2]
        # LayerNorm-like views: each row group owns fixed columns -> fused partial dweight/dbias
        # (stored in the statistics' precision: float32 partials of float32 input halve traffic).
        fuse = length == 1 and g == 1 and -(-m // tpr) <= k.LOCAL_COLS
        blocks, threads, tpr, niter = k.row_launch(rows, m, fused=fuse)
        groups = blocks * (threads // tpr)
        if fuse:
            sd = _stat_dtype(x4.dtype)
            pw, pb = self._empty(groups * m, sd), self._empty(groups * m, sd)
        else:
            pw, pb = self._xp.zeros(1, acc), self._xp.zeros(1, acc)
        _launch(kk.group_backward, blocks, threads)(
            dy, x, mean_f, var_f, w, dx, pw, pb, rows, m, length, d, g, acc(eps), has_w,
            bool(center), fuse, tpr, niter,
        )
        if not fuse:
            s = k.slabs(c, n * length)
            pw, pb = self._empty(s * c, acc), self._empty(s * c, acc)
            _launch(kk.group_wb_partials, (c, s), k.RED_BLOCK)(
                dy, x, mean_f, var_f, n, c, length, d, g, acc(eps), bool(center), s, pw, pb
            )
            groups = s
        dw, db = self._empty(c, gd), self._empty(c, gd)
        eb = k.ELT_BLOCK
        _launch(kk.column_sum, self._blocks(c, eb), eb)(pw, pb, groups, c, dw, db)
        return dx.reshape(x4.shape), dw.reshape(g, d), db.reshape(g, d)

    # -------------------------------------------------------------- row view (R, K)
    def standardize_rows(self, x2, eps, ddof, eps_in_root):
        k = self._k
        r, kk_ = x2.shape
        acc, sd = _acc_dtype(x2.dtype), _stat_dtype(x2.dtype)
        kk = k.get(acc)
        x = self._flat(x2)
        y = self._empty(x.size, x2.dtype)
        mean, denom = self._empty(r, sd), self._empty(r, sd)
        blocks, threads, tpr, niter = k.row_launch(r, kk_)
        with _quiet():
            _launch(kk.rows_forward, blocks, threads)(
                x, y, mean, denom, r, kk_, acc(kk_ - ddof), acc(eps), bool(eps_in_root),
                tpr, niter,
            )
        return y.reshape(x2.shape), mean, denom

    def standardize_rows_backward(self, dy2, x2, mean, denom, eps, ddof, eps_in_root):
        k = self._k
        r, kk_ = x2.shape
        acc = _acc_dtype(x2.dtype)
        kk = k.get(acc)
        x, dy = self._flat(x2), self._flat(dy2)
        dx = self._empty(x.size, x2.dtype)
        blocks, threads, tpr, niter = k.row_launch(r, kk_)
        with _quiet():
            _launch(kk.rows_backward, blocks, threads)(
                dy, x, self._flat(mean), self._flat(denom), dx, r, kk_, acc(kk_ - ddof),
                bool(eps_in_root), tpr, niter,
            )
        return dx.reshape(x2.shape)

    # -------------------------------------------------------------- dropout
    def dropout(self, x, p, seed):
        k = self._k
        xf = self._flat(x)
        y = self._empty(xf.size, x.dtype)
        blocks, threads = k.elt_launch(xf.size)
        with _quiet():  # uint64 wrap-around is intended (the simulator warns about it)
            _launch(k.dropout_kernel, blocks, threads)(
                xf, y, xf.size, np.uint64(int(seed) & ((1 << 64) - 1)),
                np.uint64(dropout_threshold(p)), float(dropout_scale(p)),
            )
        return y.reshape(x.shape)


def _launch(kern, grid, block):
    """``kern[grid, block]`` as a function of the kernel arguments.

    On a GPU, device arrays (CuPy arrays, anything with ``__cuda_array_interface__``) are handed
    to Numba as device-array views with ``sync=False``: every launch and every CuPy operation of
    this backend runs on the legacy default stream, so the stream synchronization Numba would
    otherwise do for each exported array (CAI v3) would only add a host round trip per launch.
    """
    launcher = kern[grid, block]
    if _simulator():
        return launcher

    def run(*args):
        from numba import cuda

        conv = [
            cuda.as_cuda_array(a, sync=False) if hasattr(a, "__cuda_array_interface__") else a
            for a in args
        ]
        return launcher(*conv)

    return run


class _quiet:
    """In the simulator, silence NumPy's scalar overflow / division warnings raised by kernels
    (they run as Python in other threads, so ``np.errstate`` cannot reach them)."""

    def __enter__(self):
        self._cm = None
        if _simulator():
            self._cm = warnings.catch_warnings()
            self._cm.__enter__()
            warnings.simplefilter("ignore", RuntimeWarning)
        return self

    def __exit__(self, *exc):
        if self._cm is not None:
            return self._cm.__exit__(*exc)
        return False
