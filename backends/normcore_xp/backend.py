"""The ``array-api`` backends: every kernel of the contract written once against the Python Array
API standard (through ``array-api-compat``) and run by the library that holds the arrays.

One class, :class:`ArrayAPIBackend`, parametrized by its library; one entry point per library
(``array-api``: NumPy, ``array-api-strict``, ``array-api-torch``, ``array-api-jax``,
``array-api-cupy``). An instance creates parameters and buffers in its library and computes with
the standard's functions only: no item assignment, nothing library-specific in a kernel. New
arrays go to x's device, so torch CUDA/MPS tensors and JAX arrays on an accelerator run the same.

Precision: sums accumulate in float64 wherever the library holds it (NumPy, array-api-strict,
CuPy, torch on CPU/CUDA). Where it does not (JAX with ``jax_enable_x64`` off, its default, which
normcore never switches; torch on MPS) they run in float32 with the safest float32 scheme,
*shifted and scaled two-pass* (:func:`normcore_xp._xp.moments`): each row's mean is
``t + mean(x - t)`` with ``t`` a finite sample of the row, the variance is taken about that mean,
and both passes sum ``(x - t) / s`` with ``s`` the row's largest ``|x - t|``, so a mean of 1e4
keeps its variance (to ~1e-6) and ``|x|`` up to ~1e37 neither overflows nor loses the output.
XLA flushes float32 subnormals to zero: a JAX result below 1.2e-38 is 0 where the float64
reference rounds it to a subnormal. Statistics are float64 for float64 input, float32 otherwise.

Dropout makes the contract's keep-mask on the host (``dropout_keep_mask``, splitmix64 on NumPy
uint64) and moves it to x's device: bit-exact on every library, also those without a wrapping
uint64 multiply (JAX without x64, torch), for one host-to-device copy of a bool mask per call.

Nothing imports an array library before it is used: ``is_available`` finds it without importing.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import threading
from typing import Any

import numpy as np

from normcore import DTypeError
from normcore.backend import (
    KERNELS,
    OPTIONAL_KERNELS,
    Availability,
    Backend,
    dropout_keep_mask,
    dropout_scale,
)
from normcore_xp._xp import (
    FLOATS,
    LIBRARIES,
    host,
    jax_x64,
    library_version,
    moments,
    normalized,
)


class ArrayAPIBackend(Backend):
    """The contract's kernels on any Array API library (see :mod:`normcore_xp.backend`).

    ``library`` is a key of :data:`LIBRARIES`; ``array_device`` is where ``asarray`` and ``full``
    put new arrays (e.g. ``"cuda"`` for torch; None: the library's default). Kernels compute on
    the device of their input, whatever it is.

    >>> import numpy as np, normcore
    >>> ln = normcore.LayerNorm(2, backend="array-api")      # the NumPy instance
    >>> ln(np.array([[1.0, 3.0]], np.float32)).round(3).tolist()
    [[-1.0, 1.0]]
    >>> be = ArrayAPIBackend("array_api_strict")             # kernels on any library's arrays
    >>> y, mean, var = be.group_normalize(be.asarray(np.array([[[[1.0], [3.0]]]])), None, None,
    ...                                   0.0, True)
    >>> be.to_numpy(y).ravel().tolist(), be.to_numpy(var).tolist()
    ([-1.0, 1.0], [[1.0]])
    """

    def __init__(self, library: str = "numpy", array_device: Any = None,
                 name: str | None = None) -> None:
        if library not in LIBRARIES:
            raise ValueError(f"unknown array library {library!r}; known: {sorted(LIBRARIES)}")
        self.library = library
        self._lib = LIBRARIES[library]
        self.name = name or self._lib.backend_name
        self.device = self._lib.device
        #: Contract v2 attributes (ignored by a version-1 core): the library of the arrays, and
        #: whether they can be written in place (JAX arrays cannot).
        self.array_library = library
        self.mutable = library != "jax"
        self.kernels = frozenset(KERNELS) | {"channel_backward_sums",
                                             "channel_normalize_backward_from_sums"}
        self.array_device = array_device
        self._xp: Any = None
        self._compat: Any = None
        self._last = threading.local()  # JAX: this thread's last result, for synchronize()

    def reshape(self, arr: Any, shape: tuple[int, ...]) -> Any:
        """The namespace's ``reshape`` (array-api-strict arrays have no such method)."""
        return self.compat.array_namespace(arr).reshape(arr, shape)

    def __getstate__(self) -> dict[str, Any]:  # modules do not pickle; they are found again
        state = {**self.__dict__, "_xp": None, "_compat": None}
        state.pop("_last", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._last = threading.local()

    def __repr__(self) -> str:
        return f"ArrayAPIBackend({self.library!r}, array_device={self.array_device!r})"

    # -------------------------------------------------------------- housekeeping
    @property
    def xp(self) -> Any:
        """The library's Array API namespace (imported on first use)."""
        if self._xp is None:
            self._xp = importlib.import_module(self._lib.namespace)
        return self._xp

    @property
    def compat(self) -> Any:
        if self._compat is None:
            import array_api_compat

            self._compat = array_api_compat
        return self._compat

    @property
    def dtypes(self) -> tuple[Any, ...]:  # type: ignore[override]
        """What the library can hold: no float16 in array-api-strict (the standard has none), no
        float64 in JAX unless ``jax_enable_x64`` is on."""
        if self.library == "array_api_strict":
            return (np.float32, np.float64)
        if self.library == "jax" and not jax_x64():
            return (np.float16, np.float32)
        return (np.float16, np.float32, np.float64)

    def is_available(self) -> Availability:
        missing = [m for m in (*self._lib.requires, "array_api_compat")
                   if importlib.util.find_spec(m) is None]
        if missing:
            return Availability(False, " and ".join(m.replace("_", "-") for m in missing)
                                + (" is" if len(missing) == 1 else " are") + " not installed")
        if self.library == "cupy":
            try:
                import cupy

                if cupy.cuda.runtime.getDeviceCount() < 1:
                    return Availability(False, "no CUDA device found")
            except Exception as exc:
                return Availability(False, f"CuPy cannot reach a CUDA device: {exc}")
        return Availability(True)

    def version(self) -> str:
        return library_version(self._lib)

    def synchronize(self) -> None:
        """Wait for the device's queued work: torch CUDA/MPS and CuPy synchronize; NumPy and
        array-api-strict compute eagerly. JAX dispatches asynchronously: every kernel keeps its
        result for this thread, and synchronize() blocks until that result (and so everything
        it was computed from) is ready."""
        last = getattr(self._last, "value", None)
        if last is not None:
            self._last.value = None
            import jax

            jax.block_until_ready(last)
        if self.library == "torch" and "torch" in sys.modules:
            torch = sys.modules["torch"]
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            mps = getattr(torch, "mps", None)
            if mps is not None and torch.backends.mps.is_available():
                mps.synchronize()
        elif self.library == "cupy" and "cupy" in sys.modules:
            sys.modules["cupy"].cuda.get_current_stream().synchronize()

    def numpy_dtype(self, dtype: Any) -> np.dtype:
        """The NumPy dtype of one of the library's dtypes (``torch.float32`` -> float32)."""
        try:
            return np.dtype(dtype)
        except TypeError:
            return np.dtype(str(dtype).rpartition(".")[2])

    def _dtype(self, dtype: Any) -> Any:
        """The library's dtype for ``dtype`` (NumPy's, a name, or already the library's)."""
        if dtype is None:
            return None
        try:
            name = np.dtype(dtype).name
        except TypeError:
            return dtype  # the library's own dtype object (torch.float32, ...)
        narrow = self.library == "jax" and not jax_x64()  # JAX would make int64 int32 silently
        if (name in FLOATS and np.dtype(name) not in {np.dtype(d) for d in self.dtypes}) or (
                narrow and name in ("int64", "uint64", "complex128")):
            hint = " unless jax_enable_x64 is on" if self.library == "jax" else ""
            raise DTypeError(f"backend {self.name!r} cannot hold {name} ({self.library} has no "
                             f"{name}{hint}); it takes the floating dtypes "
                             f"{'/'.join(np.dtype(d).name for d in self.dtypes)}")
        return getattr(self.xp, name)

    def is_native(self, arr: Any) -> bool:
        module, _, cls = self._lib.array_type.rpartition(".")
        mod = sys.modules.get(module)  # not imported: cannot be its array
        return mod is not None and isinstance(arr, getattr(mod, cls))

    def asarray(self, obj: Any, dtype: Any = None) -> Any:
        want = self._dtype(dtype)
        if self.is_native(obj):
            return obj if want is None or obj.dtype == want else self.xp.astype(obj, want)
        data = host(obj)
        if any(st < 0 for st in data.strides):  # torch takes no negative strides
            data = data.copy()
        want = want if want is not None else self._dtype(data.dtype)
        return self.xp.asarray(data, dtype=want, device=self.array_device)

    def to_numpy(self, arr: Any) -> np.ndarray:
        if isinstance(arr, np.ndarray):
            return arr
        if self.library == "cupy":
            return arr.get()
        if self.library == "torch" and arr.device.type != "cpu":
            arr = arr.cpu()
        return host(arr)

    def from_dlpack(self, obj: Any) -> Any:
        """Another library's array as this library's, through DLPack (sharing memory where the
        two can), else through a host copy."""
        self._dtype(self.numpy_dtype(obj.dtype))  # refuse what the library cannot hold
        try:
            return self.xp.from_dlpack(obj)
        except (BufferError, TypeError, ValueError, RuntimeError):
            return self.asarray(host(obj))

    def write(self, target: Any, value: Any) -> None:
        """``target[...] = value`` (contract v2); a NumPy target gets a host copy of the value."""
        if isinstance(target, np.ndarray) and not isinstance(value, np.ndarray):
            value = self.to_numpy(value)
        target[...] = value

    def full(self, shape: tuple[int, ...], value: float, dtype: Any) -> Any:
        return self.xp.full(tuple(shape), value, dtype=self._dtype(dtype), device=self.array_device)

    def copy(self, arr: Any) -> Any:
        return self.xp.asarray(arr, copy=True)

    # -------------------------------------------------------------- shared pieces
    def _prep(self, x: Any) -> tuple[Any, Any, Any]:
        """(namespace, accumulation dtype, statistics dtype) for input x."""
        xp = self.xp
        if self.library == "jax":
            wide = jax_x64()
        else:
            wide = self.library != "torch" or x.device.type != "mps"
        stat = xp.float64 if x.dtype == xp.float64 else xp.float32
        return xp, xp.float64 if wide else xp.float32, stat

    def _bring(self, a: Any, x: Any) -> Any:
        """``a`` (a small per-channel array, or dy) as this library's array on x's device."""
        if a is None:
            return None
        dev = self.compat.device(x)
        if not self.is_native(a):
            return self.xp.asarray(host(a), device=dev)
        if self.device != "cpu" or self.library in ("torch", "jax"):
            if self.compat.device(a) != dev:
                return self.compat.to_device(a, dev)
        return a

    def _vec(self, a: Any, x: Any, acc: Any, shape: tuple[int, ...]) -> Any:
        """A statistic, weight or bias brought to x, in ``acc``, reshaped to broadcast."""
        if a is None:
            return None
        return self.xp.reshape(self.xp.astype(self._bring(a, x), acc), shape)

    # -------------------------------------------------------------- channel view (N, C, L)
    def channel_moments(self, x3: Any) -> tuple[Any, Any]:
        xp, acc, stat = self._prep(x3)
        xa = xp.astype(x3, acc)
        mean, _, s, q = moments(xp, xa, (0, 2), xa[0:1, :, 0:1], acc == xp.float32)
        c = x3.shape[1]
        return (xp.astype(xp.reshape(mean, (c,)), stat),
                xp.astype(xp.reshape(s * (s * q), (c,)), stat))

    def channel_normalize(self, x3: Any, mean: Any, var: Any, eps: float, weight: Any | None,
                          bias: Any | None) -> Any:
        xp, acc, _ = self._prep(x3)
        shape = (1, x3.shape[1], 1)
        mean, var, w, b = (self._vec(v, x3, acc, shape) for v in (mean, var, weight, bias))
        scale = 1.0 / xp.sqrt(var + eps)
        if w is not None:
            scale = scale * w
        y = (xp.astype(x3, acc) - mean) * scale  # centred first: exact zeros for constant input
        if b is not None:
            y = y + b
        return xp.astype(y, x3.dtype)

    def channel_normalize_backward(self, dy3: Any, x3: Any, mean: Any, var: Any, eps: float,
                                   weight: Any | None, batch_stats: bool) -> tuple[Any, Any, Any]:
        xp, acc, _ = self._prep(x3)
        shape = (1, x3.shape[1], 1)
        dyd, xd = xp.astype(self._bring(dy3, x3), acc), xp.astype(x3, acc)
        mean, var, w = (self._vec(v, x3, acc, shape) for v in (mean, var, weight))
        rstd = 1.0 / xp.sqrt(var + eps)
        xhat = (xd - mean) * rstd
        dbias = xp.sum(dyd, axis=(0, 2))
        dweight = xp.sum(dyd * xhat, axis=(0, 2))
        g = dyd if w is None else dyd * w
        if batch_stats:
            m = x3.shape[0] * x3.shape[2]
            g = g - xp.sum(g, axis=(0, 2), keepdims=True) / m - xhat * (
                xp.sum(g * xhat, axis=(0, 2), keepdims=True) / m)
        gd = x3.dtype if weight is None else self._bring(weight, x3).dtype
        return xp.astype(g * rstd, x3.dtype), xp.astype(dweight, gd), xp.astype(dbias, gd)

    def channel_backward_sums(self, dy3: Any, x3: Any, mean: Any, var: Any,
                              eps: float) -> tuple[Any, Any]:
        xp, acc, stat = self._prep(x3)
        shape = (1, x3.shape[1], 1)
        dyd = xp.astype(self._bring(dy3, x3), acc)
        mean, var = (self._vec(v, x3, acc, shape) for v in (mean, var))
        xhat = (xp.astype(x3, acc) - mean) * (1.0 / xp.sqrt(var + eps))
        return (xp.astype(xp.sum(dyd, axis=(0, 2)), stat),
                xp.astype(xp.sum(dyd * xhat, axis=(0, 2)), stat))

    def channel_normalize_backward_from_sums(self, dy3: Any, x3: Any, mean: Any, var: Any,
                                             eps: float, weight: Any | None, sum_dy: Any,
                                             sum_dy_xhat: Any, count: int) -> Any:
        xp, acc, _ = self._prep(x3)
        shape = (1, x3.shape[1], 1)
        mean, var, w, sdy, sdx = (self._vec(v, x3, acc, shape)
                                  for v in (mean, var, weight, sum_dy, sum_dy_xhat))
        rstd = 1.0 / xp.sqrt(var + eps)
        xhat = (xp.astype(x3, acc) - mean) * rstd
        scale = rstd if w is None else rstd * w
        dx = (xp.astype(self._bring(dy3, x3), acc) - sdy / count - xhat * (sdx / count)) * scale
        return xp.astype(dx, x3.dtype)

    def running_update(self, running_mean: Any, running_var: Any, mean: Any, var: Any,
                       momentum: float, var_correction: float) -> tuple[Any, Any]:
        xp, acc, _ = self._prep(running_mean)
        c = running_mean.shape[0]
        rm, rv = (self._vec(v, running_mean, acc, (c,)) for v in (running_mean, running_var))
        m, v = (self._vec(a, running_mean, acc, tuple(a.shape)) for a in (mean, var))
        new_mean = (1.0 - momentum) * rm + momentum * xp.mean(m, axis=0)
        new_var = (1.0 - momentum) * rv + momentum * (xp.mean(v, axis=0) * var_correction)
        return (xp.astype(new_mean, self._bring(running_mean, running_mean).dtype),
                xp.astype(new_var, self._bring(running_var, running_mean).dtype))

    # -------------------------------------------------------------- group view (N, G, D, L)
    def group_normalize(self, x4: Any, weight: Any | None, bias: Any | None, eps: float,
                        center: bool) -> tuple[Any, Any, Any]:
        xp, acc, stat = self._prep(x4)
        n, g, d, _ = x4.shape
        xa, scaled = xp.astype(x4, acc), acc == xp.float32
        mean, xc, s, q = moments(xp, xa, (2, 3), xa[:, :, 0:1, 0:1] if center else None, scaled)
        if not center:
            mean = xp.zeros((n, g), dtype=acc, device=self.compat.device(x4))
        y = normalized(xp, xc, s, q, eps, scaled)
        w, b = (self._vec(v, x4, acc, (1, g, d, 1)) for v in (weight, bias))
        if w is not None:
            y = y * w
        if b is not None:
            y = y + b
        return (xp.astype(y, x4.dtype), xp.astype(xp.reshape(mean, (n, g)), stat),
                xp.astype(xp.reshape(s * (s * q), (n, g)), stat))

    def group_normalize_backward(self, dy4: Any, x4: Any, mean: Any, var: Any, eps: float,
                                 weight: Any | None, center: bool) -> tuple[Any, Any, Any]:
        xp, acc, _ = self._prep(x4)
        n, g, d, length = x4.shape
        dyd, xd = xp.astype(self._bring(dy4, x4), acc), xp.astype(x4, acc)
        mean, var = (self._vec(v, x4, acc, (n, g, 1, 1)) for v in (mean, var))
        w = self._vec(weight, x4, acc, (1, g, d, 1))
        rstd = 1.0 / xp.sqrt(var + eps)
        xhat = (xd - mean) * rstd
        dweight = xp.sum(dyd * xhat, axis=(0, 3))
        dbias = xp.sum(dyd, axis=(0, 3))
        gy = dyd if w is None else dyd * w
        m = d * length
        dx = gy - xhat * (xp.sum(gy * xhat, axis=(2, 3), keepdims=True) / m)
        if center:
            dx = dx - xp.sum(gy, axis=(2, 3), keepdims=True) / m
        gd = x4.dtype if weight is None else self._bring(weight, x4).dtype
        return xp.astype(dx * rstd, x4.dtype), xp.astype(dweight, gd), xp.astype(dbias, gd)

    # -------------------------------------------------------------- row view (R, K)
    def standardize_rows(self, x2: Any, eps: float, ddof: int,
                         eps_in_root: bool) -> tuple[Any, Any, Any]:
        xp, acc, stat = self._prep(x2)
        xa, scaled = xp.astype(x2, acc), acc == xp.float32
        mean, c, s, q = moments(xp, xa, (1,), xa[:, 0:1], scaled)
        r, k = x2.shape
        qn = q * k / (k - ddof)  # v / s**2
        root = xp.sqrt(qn + eps / (s * s)) if eps_in_root else xp.sqrt(qn) + eps / s  # denom / s
        y = (c / s) / root if scaled else c / root
        return (xp.astype(y, x2.dtype), xp.astype(xp.reshape(mean, (r,)), stat),
                xp.astype(xp.reshape(s * root, (r,)), stat))

    def standardize_rows_backward(self, dy2: Any, x2: Any, mean: Any, denom: Any, eps: float,
                                  ddof: int, eps_in_root: bool) -> Any:
        xp, acc, _ = self._prep(x2)
        r, k = x2.shape
        dyd, xd = xp.astype(self._bring(dy2, x2), acc), xp.astype(x2, acc)
        mean, den = (self._vec(v, x2, acc, (r, 1)) for v in (mean, denom))
        # The contract's formula with ch = c / denom and S' = sum(dy * ch), divided by denom last:
        # dx = (dy - mean(dy) - ch * S' / n) / denom (eps_in_root; else S' / (n * sqrt(v) / denom)).
        # Nothing of the size of c**2 or of 1 / denom**2 (float32 overflow, underflow) is formed.
        ch = (xd - mean) / den
        n = k - ddof
        s = xp.sum(dyd * ch, axis=1, keepdims=True)
        if eps_in_root:
            coef = s / n
        else:
            rr = xp.sqrt(xp.sum(ch * ch, axis=1, keepdims=True) / n)  # sqrt(v) / denom
            pos = rr > 0  # the term is 0 where v == 0 (no division by zero there)
            coef = xp.where(pos, s / n / xp.where(pos, rr, xp.ones_like(rr)), xp.zeros_like(s))
        dx = (dyd - xp.mean(dyd, axis=1, keepdims=True) - ch * coef) / den
        return xp.astype(dx, x2.dtype)

    # -------------------------------------------------------------- dropout
    def dropout(self, x: Any, p: float, seed: int) -> Any:
        """The mask is the contract's own (``dropout_keep_mask``), made on the host and moved."""
        xp, acc, _ = self._prep(x)
        keep = xp.asarray(dropout_keep_mask(tuple(x.shape), p, seed),
                          device=self.compat.device(x))
        y = xp.astype(x, acc) * xp.astype(keep, acc) * dropout_scale(p)
        return xp.astype(y, x.dtype)



# The entry points (pyproject.toml), one per library: factories the registry calls with no argument.
numpy_backend = functools.partial(ArrayAPIBackend, "numpy")  # array-api
strict_backend = functools.partial(ArrayAPIBackend, "array_api_strict")  # array-api-strict
torch_backend = functools.partial(ArrayAPIBackend, "torch")  # array-api-torch: CPU tensors by default
jax_backend = functools.partial(ArrayAPIBackend, "jax")  # array-api-jax
cupy_backend = functools.partial(ArrayAPIBackend, "cupy")  # array-api-cupy: a GPU backend, named only


def _kept(kernel: Any) -> Any:
    """``kernel`` keeping a JAX result for :meth:`ArrayAPIBackend.synchronize`."""

    @functools.wraps(kernel)
    def run(self: ArrayAPIBackend, *args: Any) -> Any:
        out = kernel(self, *args)
        if self.library == "jax":
            self._last.value = out
        return out

    return run


for _name in (*KERNELS, *OPTIONAL_KERNELS):
    if _name in ArrayAPIBackend.__dict__:
        setattr(ArrayAPIBackend, _name, _kept(ArrayAPIBackend.__dict__[_name]))
