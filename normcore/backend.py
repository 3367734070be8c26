"""The backend contract: what a backend implements so that every normcore layer runs on it.

A backend owns arithmetic only. It knows nothing of layers, modules, momentum policies or torch
semantics; the functional layer (`normcore.functional`) validates input, reshapes it into one of
the canonical views below, picks defaults and decides what to do with the results.

Canonical views (all arrays are the backend's own array type, any strides):

* channel view ``x3`` of shape ``(N, C, L)``: BatchNorm statistics reduce over axes (0, 2), one
  value per channel. BatchNorm1d/2d/3d and every evaluation-mode normalization with fixed
  per-channel statistics use it.
* group view ``x4`` of shape ``(N, G, D, L)``: statistics reduce over axes (2, 3), one value per
  ``(n, g)`` "row"; the affine weight and bias have shape ``(G, D)`` and broadcast over L.
  LayerNorm is ``(rows, 1, K, 1)``, GroupNorm ``(N, G, C // G, spatial)``, InstanceNorm
  ``(N, C, 1, spatial)`` and RMSNorm is LayerNorm with ``center=False``.
* row view ``x2`` of shape ``(R, K)``: weight standardization, one row per output filter.

Rules every kernel follows:

* Inputs are never mutated; every result is a new array (running statistics included: the
  modules keep the arrays a kernel returns, and only ``F.batch_norm``/``F.instance_norm`` write
  them into the caller's arrays, through :meth:`Backend.write`, when the backend is ``mutable``).
* ``x``/``dy`` have a floating dtype (float16, float32, float64, and whatever else the backend
  lists in ``dtypes``); outputs of the same shape as ``x`` have x's dtype. Statistics (mean, var,
  denominators) are float64 for float64 input and float32 otherwise; float16 input is computed in
  float32 at least. Float32 input must accumulate safely (float64 sums or a two-pass scheme): a
  float32 input with mean 1e4 and std 1 gives a variance within 1e-3 of the float64 answer.
* Weight, bias and running statistics have the statistics' precision or the input's dtype; a
  kernel accepts either and returns dweight/dbias in the dtype of the weight it was given (x's
  dtype when the weight is None).
* ``var`` is always the biased (population) variance; ``rstd = 1 / sqrt(var + eps)``.
* The layers never call a kernel with an empty array (any dimension 0): they handle that case.
* Sums are deterministic run to run for a fixed thread count.

A new backend subclasses :class:`Backend`, implements the kernels listed in :data:`KERNELS`
(or declares a subset in ``kernels`` and lets users opt into falling back to the reference),
optionally some of :data:`OPTIONAL_KERNELS`, and
registers a factory in the ``normcore.backends`` entry-point group. ``docs/writing-a-backend.md``
walks through it; ``normcore verify --backend NAME`` proves it.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._interop import np_dtype

#: The contract version this core implements. Version 2 added ``array_library``, ``mutable``,
#: ``synchronize()``, ``from_dlpack()`` and ``write()`` (each with a default that keeps a version-1
#: backend working); a version-1 backend still loads, with a DeprecationWarning.
API_VERSION = 2
#: Contract versions a backend may declare.
SUPPORTED_API_VERSIONS = (1, 2)

#: Every kernel of the contract, in the order the docs present them.
KERNELS: tuple[str, ...] = (
    "channel_moments",
    "channel_normalize",
    "channel_normalize_backward",
    "running_update",
    "group_normalize",
    "group_normalize_backward",
    "standardize_rows",
    "standardize_rows_backward",
    "dropout",
)

#: Fused kernels a backend may add for speed, each defined as a composition of kernels above.
#: A backend lists one in ``kernels`` to have the layers call it; otherwise they call the parts.
OPTIONAL_KERNELS: tuple[str, ...] = (
    "channel_moments_normalize",
    "channel_moments_normalize_update",
    # SyncBatchNorm's backward (normcore.sync_batchnorm): the local sums that ranks add up, and the
    # input gradient from the global ones. The base class composes both from the kernels above.
    "channel_backward_sums",
    "channel_normalize_backward_from_sums",
)


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here; falsy with a human-readable ``reason`` when it cannot."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


class Backend(abc.ABC):
    """Base class of every backend. Subclasses set ``name`` and implement the kernels.

    Arrays are whatever the backend computes on (NumPy arrays, CuPy arrays, JAX arrays, torch
    tensors, ...). They must offer ``shape``, ``dtype`` (a NumPy dtype, or an object whose name
    NumPy knows, as ``torch.float32``), ``ndim`` and ``+`` (used to accumulate gradients);
    reshapes go through :meth:`reshape`. Nothing is ever assigned into them
    except through :meth:`write`, and only when ``mutable`` is true.
    """

    #: Registry name, e.g. ``"numpy"``. Set by subclasses.
    name: ClassVar[str] = ""
    #: Contract version the backend was written against.
    api_version: ClassVar[int] = API_VERSION
    #: Where the kernels run: ``"cpu"``, or ``"gpu"`` (or any other name). Arrays on a device
    #: a CPU backend cannot reach (a CUDA tensor) are refused with a message naming the way out.
    device: ClassVar[str] = "cpu"
    #: The library whose arrays the kernels take and return (``"numpy"``, ``"cupy"``, ``"jax"``,
    #: ``"torch"``, ...). Automatic selection considers CPU backends of NumPy arrays only; any
    #: backend takes other libraries' arrays through :meth:`from_dlpack` and gives its results
    #: back in the caller's library.
    array_library: ClassVar[str] = "numpy"
    #: Whether :meth:`write` can update an array in place. False for libraries of immutable
    #: arrays (JAX): the functional API then leaves the caller's running statistics as they are
    #: and returns the new ones in ``saved.running``.
    mutable: ClassVar[bool] = True
    #: Kernels this backend implements. A partial backend lists fewer; see ``normcore.registry``.
    kernels: ClassVar[frozenset[str]] = frozenset(KERNELS)
    #: Input dtypes the kernels accept.
    dtypes: ClassVar[tuple[Any, ...]] = (np.float16, np.float32, np.float64)

    # ------------------------------------------------------------------ housekeeping
    def is_available(self) -> Availability:
        """Whether this backend can run on this machine (libraries importable, device present)."""
        return Availability(True)

    def version(self) -> str:
        """Version string shown by ``normcore info`` (e.g. the version of the library it wraps)."""
        return ""

    # A backend is a service, not data: copying a module (copy.deepcopy, pickle) keeps the
    # registry's instance, so the copy and the original run on the very same backend, and a
    # pickle loaded in another process finds that process's backend by name (or says why not).
    def __reduce_ex__(self, protocol: Any) -> Any:
        # The registry marks each instance it loads with its lookup (``_loaded_by``); this module
        # imports nothing from the registry.
        lookup = self.__dict__.get("_loaded_by")
        if lookup is not None:
            return lookup, (self.name,)
        return super().__reduce_ex__(protocol)

    def __deepcopy__(self, memo: dict[int, Any]) -> Backend:
        return self

    def __copy__(self) -> Backend:
        return self

    @abc.abstractmethod
    def asarray(self, obj: Any, dtype: Any = None) -> Any:
        """Convert ``obj`` to this backend's array type without copying when it already is one.

        ``dtype=None`` keeps the dtype of ``obj``. Never changes values except for the dtype cast.
        """

    @abc.abstractmethod
    def to_numpy(self, arr: Any) -> np.ndarray:
        """Return ``arr`` as a NumPy array (copies device memory to the host)."""

    def is_native(self, arr: Any) -> bool:
        """True when ``arr`` is already this backend's array type (no conversion needed)."""
        return isinstance(arr, np.ndarray)

    def full(self, shape: tuple[int, ...], value: float, dtype: Any) -> Any:
        """A new array of ``shape`` filled with ``value`` (used for parameters and buffers)."""
        return self.asarray(np.full(shape, value, dtype=dtype))

    def copy(self, arr: Any) -> Any:
        """An independent copy of ``arr`` (used when loading state and snapshotting buffers)."""
        return self.asarray(self.to_numpy(arr).copy())

    def reshape(self, arr: Any, shape: tuple[int, ...]) -> Any:
        """``arr`` with another shape, a view where the strides allow (the layers' canonical views
        and their way back). Default: ``arr.reshape(shape)``; a library whose arrays have no
        method for it (array-api-strict) calls its namespace's function."""
        return arr.reshape(shape)

    def from_dlpack(self, obj: Any) -> Any:
        """Another library's array (anything with ``__dlpack__``) as this backend's array, sharing
        memory where the two can. The default takes it through NumPy (host memory)."""
        return self.asarray(np.from_dlpack(obj))

    def synchronize(self) -> None:
        """Wait until every kernel launched so far has finished (an asynchronous backend's
        results may still be computing when a kernel returns). ``normcore bench``, the asv suite
        and the conformance kit's timings call it before they read a clock. Default: nothing to
        wait for."""
        return None

    def writable(self, arr: Any) -> bool:
        """Whether :meth:`write` can update ``arr`` (a read-only NumPy view cannot be)."""
        flags = getattr(arr, "flags", None)
        return self.mutable and bool(getattr(flags, "writeable", True))

    def write(self, target: Any, value: Any) -> None:
        """Copy ``value`` into ``target`` in place (same shape and dtype). Only the functional
        API's running statistics use it, and only when ``mutable`` and :meth:`writable`."""
        target[...] = value

    # ------------------------------------------------------------------ channel view (N, C, L)
    def channel_moments(self, x3: Any) -> tuple[Any, Any]:
        """Per-channel mean and biased variance of ``x3`` over axes (0, 2). Returns two (C,) arrays."""
        raise NotImplementedError

    def channel_normalize(
        self, x3: Any, mean: Any, var: Any, eps: float, weight: Any | None, bias: Any | None
    ) -> Any:
        """``y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]`` over the (N, C, L) view.

        ``weight``/``bias`` are (C,) or None (meaning 1 and 0). Returns y with x's shape and dtype.
        """
        raise NotImplementedError

    def channel_normalize_backward(
        self,
        dy3: Any,
        x3: Any,
        mean: Any,
        var: Any,
        eps: float,
        weight: Any | None,
        batch_stats: bool,
    ) -> tuple[Any, Any, Any]:
        """Gradients of :meth:`channel_normalize`. Returns ``(dx3, dweight, dbias)``.

        With ``xhat = (x - mean) * rstd``, ``g = dy * weight`` and sums over axes (0, 2), M = N*L:
        ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)``, and
        ``dx = rstd * (g - sum(g)/M - xhat * sum(g * xhat)/M)`` when ``batch_stats`` (mean and var
        were computed from this x), or ``dx = rstd * g`` when they were constants (evaluation).
        """
        raise NotImplementedError

    def channel_moments_normalize(
        self, x3: Any, eps: float, weight: Any | None, bias: Any | None
    ) -> tuple[Any, Any, Any]:
        """Optional (see :data:`OPTIONAL_KERNELS`): :meth:`channel_moments` and
        :meth:`channel_normalize` with those statistics in one call. Returns ``(y3, mean, var)``.

        A backend lists it in ``kernels`` when it does the two passes in one call (a cache-sized
        BatchNorm's training forward spends a good part of its time on per-call costs). It may
        normalize with the statistics in a wider type than the ``mean``/``var`` it returns.
        """
        mean, var = self.channel_moments(x3)
        return self.channel_normalize(x3, mean, var, eps, weight, bias), mean, var

    def channel_moments_normalize_update(
        self, x3: Any, eps: float, weight: Any | None, bias: Any | None, running_mean: Any,
        running_var: Any, momentum: float, var_correction: float
    ) -> tuple[Any, Any, Any, Any, Any]:
        """Optional (see :data:`OPTIONAL_KERNELS`): :meth:`channel_moments_normalize` and
        :meth:`running_update` with its statistics (as a (1, C) batch) in one call. Returns
        ``(y3, mean, var, new_running_mean, new_running_var)``; the running inputs are left as
        they are.

        A backend lists it when the running update costs a call of its own that it can save
        (on a cache-sized BatchNorm, a few microseconds of a ~100 us training forward).
        """
        if "channel_moments_normalize" in self.kernels:
            y, mean, var = self.channel_moments_normalize(x3, eps, weight, bias)
        else:  # (the base class's composition, as normcore.registry.kernel hands it out)
            y, mean, var = Backend.channel_moments_normalize(self, x3, eps, weight, bias)
        c = x3.shape[1]
        new_mean, new_var = self.running_update(running_mean, running_var,
                                                self.reshape(mean, (1, c)),
                                                self.reshape(var, (1, c)), momentum,
                                                var_correction)
        return y, mean, var, new_mean, new_var

    def channel_backward_sums(self, dy3: Any, x3: Any, mean: Any, var: Any, eps: float
                              ) -> tuple[Any, Any]:
        """Optional (see :data:`OPTIONAL_KERNELS`): the per-channel sums of BatchNorm's backward,
        ``(sum(dy), sum(dy * xhat))`` over axes (0, 2) with ``xhat = (x - mean) * rstd``, as two
        (C,) arrays in the statistics' precision (float64 for float64 input, float32 otherwise:
        a float16 batch's sums do not overflow).

        SyncBatchNorm adds them up over every process, then calls
        :meth:`channel_normalize_backward_from_sums`. The default is :meth:`channel_normalize_backward`
        with a weight of ones in that precision and ``batch_stats=False`` (its dx is discarded);
        a backend lists this kernel to skip computing that dx.
        """
        sd = _stat_dtype(x3.dtype)
        ones = self.asarray(np.ones(x3.shape[1], dtype=sd))
        _, sum_dy_xhat, sum_dy = self.channel_normalize_backward(dy3, x3, mean, var, eps, ones, False)
        return sum_dy, sum_dy_xhat

    def channel_normalize_backward_from_sums(
        self, dy3: Any, x3: Any, mean: Any, var: Any, eps: float, weight: Any | None,
        sum_dy: Any, sum_dy_xhat: Any, count: int
    ) -> Any:
        """Optional (see :data:`OPTIONAL_KERNELS`): BatchNorm's input gradient from given sums.

        ``dx = rstd * weight * (dy - sum_dy / count - xhat * sum_dy_xhat / count)`` per channel,
        with ``xhat = (x - mean) * rstd``; ``sum_dy``/``sum_dy_xhat`` are (C,) arrays in the
        statistics' precision and ``count`` the number of values per channel they were summed
        over (M = N*L when they are this x's own: then dx equals
        :meth:`channel_normalize_backward`'s with ``batch_stats``). SyncBatchNorm passes sums
        and count over every process's batch. Returns dx3 with x's shape and dtype.

        The default composes the contract's kernels on the backend's own arrays (only (C,)
        coefficient vectors visit the host): ``channel_normalize_backward(batch_stats=False)``
        gives ``rstd * weight * dy``, and :meth:`channel_normalize` with weight
        ``-rstd * weight * sum_dy_xhat / count`` and bias ``-rstd * weight * sum_dy / count``
        gives the rest; the two are added in the statistics' precision (float16 input is
        computed on float32 copies made with :meth:`asarray`, so that the sum of the two parts
        does not cancel in float16) and rounded to x's dtype. A backend lists this kernel to do
        it in one pass.
        """
        sd = _stat_dtype(x3.dtype)
        out_dtype = np_dtype(x3.dtype)
        if out_dtype != sd:  # float16: the parts in float32, one rounding at the end
            dy3, x3 = self.asarray(dy3, sd), self.asarray(x3, sd)
            weight = None if weight is None else self.asarray(weight, sd)
        rstd = 1.0 / np.sqrt(np.asarray(self.to_numpy(var), dtype=np.float64) + eps)
        k = rstd / float(count)
        if weight is not None:
            k = k * np.asarray(self.to_numpy(weight), dtype=np.float64)
        scale = -k * np.asarray(self.to_numpy(sum_dy_xhat), dtype=np.float64)
        shift = -k * np.asarray(self.to_numpy(sum_dy), dtype=np.float64)
        rest = self.channel_normalize(x3, mean, var, eps, self.asarray(scale.astype(sd)),
                                      self.asarray(shift.astype(sd)))
        dx, _, _ = self.channel_normalize_backward(dy3, x3, mean, var, eps, weight, False)
        dx = dx + rest
        return dx if out_dtype == sd else self.asarray(dx, out_dtype)

    def running_update(
        self,
        running_mean: Any,
        running_var: Any,
        mean: Any,
        var: Any,
        momentum: float,
        var_correction: float,
    ) -> tuple[Any, Any]:
        """New running statistics from batch statistics of shape (B, C), averaged over B.

        ``new_mean = (1 - momentum) * running_mean + momentum * mean.mean(0)`` and
        ``new_var = (1 - momentum) * running_var + momentum * var_correction * var.mean(0)``,
        returned in the dtype of ``running_mean``; the inputs are left as they are.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ group view (N, G, D, L)
    def group_normalize(
        self, x4: Any, weight: Any | None, bias: Any | None, eps: float, center: bool
    ) -> tuple[Any, Any, Any]:
        """Normalize each (n, g) row of ``x4`` over axes (2, 3). Returns ``(y4, mean, var)``.

        ``center=True``: ``mean``/``var`` are the row mean and biased variance, and
        ``y = (x - mean) / sqrt(var + eps) * weight[g, d] + bias[g, d]``.
        ``center=False`` (RMS): ``mean`` is zeros, ``var`` is the mean of squares, and
        ``y = x / sqrt(var + eps) * weight[g, d] (+ bias[g, d])``.
        ``weight``/``bias`` are (G, D) or None; ``mean``/``var`` are (N, G).
        """
        raise NotImplementedError

    def group_normalize_backward(
        self,
        dy4: Any,
        x4: Any,
        mean: Any,
        var: Any,
        eps: float,
        weight: Any | None,
        center: bool,
    ) -> tuple[Any, Any, Any]:
        """Gradients of :meth:`group_normalize`. Returns ``(dx4, dweight, dbias)``; the last two (G, D).

        Per row with M = D*L, ``xhat = (x - mean) * rstd`` and ``g = dy * weight[g, d]``:
        ``dx = rstd * (g - sum(g)/M - xhat * sum(g * xhat)/M)`` (center) or
        ``dx = rstd * (g - xhat * sum(g * xhat)/M)`` (RMS, ``xhat = x * rstd``);
        ``dweight = sum over (n, l) of dy * xhat``; ``dbias = sum over (n, l) of dy``.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ row view (R, K)
    def standardize_rows(
        self, x2: Any, eps: float, ddof: int, eps_in_root: bool
    ) -> tuple[Any, Any, Any]:
        """Weight standardization: ``y = (x - mean) / denom`` per row. Returns ``(y2, mean, denom)``.

        ``v = sum((x - mean)**2) / (K - ddof)``; ``denom = sqrt(v + eps)`` when ``eps_in_root``,
        else ``sqrt(v) + eps``. ``mean`` and ``denom`` are (R,).
        """
        raise NotImplementedError

    def standardize_rows_backward(
        self, dy2: Any, x2: Any, mean: Any, denom: Any, eps: float, ddof: int, eps_in_root: bool
    ) -> Any:
        """Gradient of :meth:`standardize_rows` with respect to x. Returns dx2.

        With ``c = x - mean`` and ``S = sum(dy * c)`` per row:
        ``dx = (dy - mean(dy)) / denom - c * S / ((K - ddof) * denom**3)`` when ``eps_in_root``,
        ``dx = (dy - mean(dy)) / denom - c * S / ((K - ddof) * sqrt(v) * denom**2)`` otherwise
        (the second term is 0 where ``v == 0``).
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ dropout
    def dropout(self, x: Any, p: float, seed: int) -> Any:
        """Inverted dropout with a counter-based mask: ``y[i] = x[i] * keep(i) * dropout_scale(p)``.

        Element i (its flat index in C order of x's shape, whatever x's strides) is kept when
        ``splitmix64(seed ^ splitmix64(i)) >> 40 >= dropout_threshold(p)`` (integer arithmetic
        modulo 2**64, ``seed`` in [0, 2**63)). The mask is bit-exact across backends, so one seed
        drops the same elements everywhere, and backward is the same call applied to dy.
        ``p == 1`` gives zeros, ``p == 0`` returns x unchanged (as a new array).
        """
        raise NotImplementedError


def _stat_dtype(dtype: Any) -> type:
    """The statistics' precision for input of ``dtype`` (any library's dtype object)."""
    return np.float64 if np_dtype(dtype) == np.float64 else np.float32


# ---------------------------------------------------------------------- the dropout hash
_MASK64 = (1 << 64) - 1


def splitmix64(z: int) -> int:
    """SplitMix64 finalizer (Steele, Lea, Flood 2014) on a Python int; the reference definition."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def dropout_threshold(p: float) -> int:
    """Elements whose 24-bit hash is below this integer are dropped: ``ceil(p * 2**24)``."""
    return int(math.ceil(p * (1 << 24)))


def dropout_scale(p: float) -> float:
    """The factor kept elements are multiplied by: ``1 / (1 - p)``, and 0 for ``p == 1``."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


def dropout_keep_mask(shape: tuple[int, ...], p: float, seed: int) -> np.ndarray:
    """The boolean keep-mask of :meth:`Backend.dropout`, vectorized in NumPy (reference and tests)."""
    n = int(np.prod(shape, dtype=np.int64))
    with np.errstate(over="ignore"):
        idx = np.arange(n, dtype=np.uint64)
        h = _splitmix64_np(np.uint64(seed & _MASK64) ^ _splitmix64_np(idx))
    return ((h >> np.uint64(40)) >= np.uint64(dropout_threshold(p))).reshape(shape)


def _splitmix64_np(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
