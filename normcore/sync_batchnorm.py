"""SyncBatchNorm: BatchNorm whose training statistics are those of every process's batch together
(torch.nn.SyncBatchNorm's semantics), over MPI, on any backend.

Forward, in training, on each process of the communicator:

1. one small Allgather of a fixed-size header (ok flag, channels, dtype) checks that every
   process can go on, so a wrong input on one process raises on all instead of hanging;
2. the backend's ``channel_moments`` gives the local (count, mean, M2); one Allgather of those
   2C + 1 float64 numbers per process, merged with Chan's formula in rank order
   (:func:`normcore.distributed.merge_moments`), gives every process the same global mean and
   variance (an empty batch takes part with count 0);
3. ``channel_normalize`` normalizes the local rows; the running statistics are updated with the
   global statistics and count (unbiased with the global count), identically on every process.

Backward: the backend's ``channel_backward_sums`` gives the local ``sum(dy)``, ``sum(dy*xhat)``;
one Allreduce of those 2C (+1 error flag) numbers gives the global sums, and
``channel_normalize_backward_from_sums`` the input gradient, equal to the single-process
gradient of the joined batch on this process's rows. ``weight.grad``/``bias.grad`` receive the
local sums, as torch's: data-parallel training adds them up afterwards
(:func:`normcore.distributed.allreduce_gradients`, torch's DDP).

Evaluation uses the running statistics and communicates nothing; with one process (or no MPI at
all) SyncBatchNorm is exactly BatchNorm. Every process must make the same calls in the same order
(training forward, then backward), as with any MPI collective; one thread per communicator.

>>> import numpy as np, normcore
>>> bn = normcore.SyncBatchNorm(3)            # under mpiexec -n 4: statistics of all 4 batches
>>> x = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
>>> y = bn(x)                                 # one process: exactly BatchNorm1d(3)(x)
>>> dx = bn.backward(np.ones_like(y))
>>> bool(np.allclose(y, normcore.BatchNorm1d(3)(x))), sorted(bn.state_dict())
(True, ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight'])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import distributed as dist
from . import functional as F
from . import registry
from ._checks import DTypeError, ShapeError, as_input, numel
from ._interop import np_dtype
from .backend import Backend
from .modules import _BatchNorm

__all__ = ["SyncBatchNorm"]

Array = Any


@dataclass
class _SyncContext:
    """What a synchronized forward keeps for its backward, besides :class:`F.Saved`."""

    comm: Any
    channels: int
    count: int  # values per channel in this process's batch
    total: int  # values per channel in every process's batch together


class SyncBatchNorm(_BatchNorm):
    """Batch normalization over the union of every process's batch, as ``torch.nn.SyncBatchNorm``.

    ``comm`` is an mpi4py communicator (default ``MPI.COMM_WORLD``, looked up at the first
    training forward; a sub-communicator from ``comm.Split`` makes process groups). Input of
    any rank >= 2, (N, C, *), as torch's. See the module docstring for the protocol.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, comm: Any = None, *,
                 bias: bool = True, backend: str | Backend | None = None,
                 dtype: Any = np.float32) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias,
                         backend=backend, dtype=dtype)
        self.comm = comm

    # a communicator is a connection, not data: copies and pickles leave it out (None: the
    # world's), as torch's SyncBatchNorm pickles no process group
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["comm"] = None
        return state

    def _check_input_dim(self, x: Array) -> None:
        if x.ndim < 2:
            raise ShapeError(f"expected at least 2D input (got {x.ndim}D input)")

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.comm is None else f", comm={self.comm!r}")

    # -------------------------------------------------------------- forward
    def forward(self, input: Array) -> Array:
        if not self.training:  # evaluation: no communication (torch)
            return super().forward(input)
        comm = self.comm if self.comm is not None else dist.default_comm()
        if dist.world_size(comm) == 1:
            return super().forward(input)
        if self.track_running_stats:
            with self._lock:  # read, update and commit the running statistics as one step
                return self._sync_forward(input, comm)
        return self._sync_forward(input, comm)

    def _local_input(self, input: Array) -> Array:
        x = as_input(input, self.backend)
        self._check_input_dim(x)
        if x.shape[1] != self.num_features:
            raise ShapeError(f"expected input with {self.num_features} channels at dim 1, got "
                             f"{x.shape[1]} (input shape {tuple(x.shape)})")
        if np_dtype(x.dtype) != self.dtype:
            raise DTypeError(f"input dtype {np_dtype(x.dtype)} does not match the layer's dtype "
                             f"{self.dtype}")
        if self.eps <= 0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {self.eps}")
        return x

    def _sync_forward(self, input: Array, comm: Any) -> Array:
        be, c = self.backend, self.num_features
        x, error = None, None
        try:
            x = self._local_input(input)
        except Exception as exc:  # every process must hear of it before the statistics' collective
            error = exc
        dtype_code = 0 if x is None else np_dtype(x.dtype).num
        table = dist.agree(comm, np.array([error is None, c, dtype_code]), error,
                           "SyncBatchNorm forward")
        if (table[:, 1] != c).any() or (table[:, 2] != dtype_code).any():
            raise ShapeError(f"SyncBatchNorm: the processes' layers differ in channels or dtype "
                             f"(per rank: channels {table[:, 1].tolist()}, dtypes "
                             f"{[_dtype_name(d) for d in table[:, 2]]})")

        n_ = x.shape[0]
        count = numel(tuple(x.shape)) // c
        local = np.zeros(2 * c + 1)
        x3 = None
        if count:
            x3 = be.reshape(x, (n_, c, count // n_))
            mean, var = registry.kernel(be, "channel_moments")(x3)
            local[0] = count
            local[1:c + 1] = be.to_numpy(mean)
            local[c + 1:] = np.asarray(be.to_numpy(var), dtype=np.float64) * count
        total, g_mean, g_m2 = dist.merge_moments(dist.allgather(comm, local))
        total = int(total)
        if total == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got 1 over "
                             f"all {comm.Get_size()} processes (this one's input size "
                             f"{tuple(x.shape)})")

        tracked = int(self._buffers["num_batches_tracked"]) + 1 if self.track_running_stats else 0
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.momentum is None:
            factor = 1.0 / tracked  # cumulative moving average
        sd = np.float64 if self.dtype == np.float64 else np.float32
        mean_b = be.asarray(g_mean.astype(sd))
        var_b = be.asarray((g_m2 / max(total, 1)).astype(sd))
        update = None
        if self.track_running_stats and total:
            update = registry.kernel(be, "running_update")(
                self.running_mean, self.running_var, be.reshape(mean_b, (1, c)),
                be.reshape(var_b, (1, c)), factor, total / (total - 1))
        if x3 is None:
            y = be.full(tuple(x.shape), 0.0, x.dtype)
        else:
            y = registry.kernel(be, "channel_normalize")(x3, mean_b, var_b, self.eps,
                                                         self._weight(), self._bias())
            y = be.reshape(y, tuple(x.shape))
        # commit state only after everything succeeded
        if self.track_running_stats:
            self._buffers["num_batches_tracked"] = np.array(tracked, dtype=np.int64)
        if update is not None:
            self._buffers.update(running_mean=update[0], running_var=update[1])
        self._saved = F.Saved(
            "batch_norm", be, tuple(x.shape), np_dtype(x.dtype), x=x3, mean=mean_b, var=var_b,
            eps=self.eps, weight=self._weight(), weight_shape=(c,) if self.affine else None,
            has_bias=self._bias() is not None,
            extra={"batch_stats": True, "sync": _SyncContext(comm, c, count, total)})
        return y

    # -------------------------------------------------------------- backward
    def _backward(self, grad_output: Array, saved: F.Saved) -> tuple[Array, Array, Array]:
        sync: _SyncContext | None = saved.extra.get("sync")
        if sync is None:
            return F.batch_norm_backward(grad_output, saved)
        be, c = saved.backend, sync.channels
        dy3, error = None, None
        try:
            dy3 = be.reshape(F._check_grad(grad_output, saved, "batch_norm"),
                             tuple(saved.x.shape) if saved.x is not None else saved.input_shape)
        except Exception as exc:  # still take part in the Allreduce, with the flag set
            error = exc
        local = np.zeros(2 * c + 1)
        if error is None and saved.x is not None:
            sum_dy, sum_dy_xhat = registry.kernel(be, "channel_backward_sums")(
                dy3, saved.x, saved.mean, saved.var, saved.eps)
            local[:c] = be.to_numpy(sum_dy)
            local[c:2 * c] = be.to_numpy(sum_dy_xhat)
        local[2 * c] = error is not None
        total = dist.allreduce_sum(sync.comm, local)
        if error is not None:
            raise error
        if total[2 * c]:
            raise dist.DistributedError(f"SyncBatchNorm backward failed on {int(total[2 * c])} "
                                        "other process(es); every process raises")
        wd = self.dtype
        dweight = be.asarray(local[c:2 * c].astype(wd)) if saved.weight_shape else None
        dbias = be.asarray(local[:c].astype(wd)) if saved.has_bias else None
        if saved.x is None:
            return be.full(saved.input_shape, 0.0, wd), dweight, dbias
        sd = np.float64 if wd == np.float64 else np.float32
        dx3 = registry.kernel(be, "channel_normalize_backward_from_sums")(
            dy3, saved.x, saved.mean, saved.var, saved.eps, saved.weight,
            be.asarray(total[:c].astype(sd)), be.asarray(total[c:2 * c].astype(sd)), sync.total)
        return be.reshape(dx3, saved.input_shape), dweight, dbias

    # -------------------------------------------------------------- conversion
    @classmethod
    def convert_sync_batchnorm(cls, module: Any, comm: Any = None) -> Any:
        """Replace every BatchNorm1d/2d/3d in ``module`` by a SyncBatchNorm that shares its
        parameters, buffers, training flag, backend and dtype (as torch's, which takes
        ``process_group`` where this takes ``comm``). ``module`` is a BatchNorm (the new layer
        is returned), or a list, dict, tuple or object of your own holding layers (converted in
        place, the same object returned; a tuple is returned anew).

        >>> import normcore
        >>> model = {"bn": normcore.BatchNorm2d(8), "ln": normcore.LayerNorm(8)}
        >>> model = normcore.SyncBatchNorm.convert_sync_batchnorm(model)
        >>> type(model["bn"]).__name__, type(model["ln"]).__name__
        ('SyncBatchNorm', 'LayerNorm')
        """
        return _convert(cls, module, comm, set())


def _dtype_name(code: int) -> str:
    for name in ("float16", "float32", "float64"):
        if np.dtype(name).num == code:
            return name
    return "unknown" if code == 0 else f"dtype #{int(code)}"


def _convert(cls: type[SyncBatchNorm], obj: Any, comm: Any, seen: set[int]) -> Any:
    from .modules import Module

    if isinstance(obj, _BatchNorm) and not isinstance(obj, SyncBatchNorm):
        with obj._lock:
            out = cls(obj.num_features, obj.eps, obj.momentum, obj.affine,
                      obj.track_running_stats, comm, bias=obj._params.get("bias") is not None,
                      backend=obj.backend, dtype=obj.dtype)
            out._params.update(obj._params)  # the same Parameter objects, as torch shares them
            out._buffers.update(obj._buffers)
            out.training = obj.training
        return out
    if id(obj) in seen or isinstance(obj, (Module, *dist._NO_DESCENT)) or obj is None:
        return obj
    seen.add(id(obj))
    if isinstance(obj, list):
        obj[:] = [_convert(cls, item, comm, seen) for item in obj]
    elif isinstance(obj, dict):
        for key, item in list(obj.items()):
            obj[key] = _convert(cls, item, comm, seen)
    elif isinstance(obj, tuple):
        items = [_convert(cls, item, comm, seen) for item in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] not in dist._LIBRARIES:
        for key, item in list(vars(obj).items()):
            new = _convert(cls, item, comm, seen)
            if new is not item:
                setattr(obj, key, new)
    return obj
