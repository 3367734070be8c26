"""Several processes over MPI: the communicator, the collectives SyncBatchNorm makes, the merge of
per-process statistics, and the all-reduce of parameter gradients for data-parallel training.

``mpi4py`` is imported only when a communicator is needed (``import normcore`` never imports it):
``pip install 'normcore[mpi]'`` installs mpi4py and the MPICH library, and ``mpiexec -n 4 python
train.py`` starts four processes. Every collective here is made by every process of the
communicator in the same order; a process that raises locally (a wrong shape, a wrong dtype)
still takes part in the collective that says so, so every process raises instead of waiting
forever. A process that dies cannot take part: MPI's launcher then aborts the whole job (MPICH's
``mpiexec`` kills the other processes and exits non-zero), which is the standard MPI outcome.

Arrays cross MPI as host NumPy buffers: SyncBatchNorm sends per-channel vectors only (2C + 1
float64 numbers per process), never a batch, so a GPU backend copies those few numbers to the host
even when the MPI library is CUDA-aware (:func:`cuda_aware` says whether it is).

>>> from normcore import distributed
>>> distributed.world_size(None)   # no communicator: a world of one process
1
"""

from __future__ import annotations

import ctypes
import os
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["DistributedError", "default_comm", "world_size", "launched_by_mpi", "cuda_aware",
           "mpi_info", "merge_moments", "allreduce_gradients"]

#: Environment variables an MPI launcher sets in the processes it starts (MPICH/Hydra and Intel
#: MPI, PMIx, Open MPI, MVAPICH, Cray ALPS).
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                      "MV2_COMM_WORLD_SIZE", "ALPS_APP_PE")


class DistributedError(RuntimeError):
    """A collective failed, or another process failed in one: raised on every process."""


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (``mpiexec``, ``srun`` with PMI/PMIx, ...) started this process."""
    return any(v in os.environ for v in LAUNCHER_VARIABLES)


def default_comm() -> Any | None:
    """``mpi4py.MPI.COMM_WORLD``; None (a world of this process alone) when mpi4py is not
    installed and no MPI launcher started this process. Raises ImportError when a launcher did
    but mpi4py is missing: the processes would otherwise each normalize their own batch."""
    try:
        from mpi4py import MPI
    except ImportError:
        if launched_by_mpi():
            raise ImportError("this process was started by an MPI launcher, but mpi4py is not "
                              "installed: pip install 'normcore[mpi]' (mpi4py and mpich)") from None
        return None
    return MPI.COMM_WORLD


def world_size(comm: Any | None) -> int:
    """The number of processes of ``comm`` (1 for None)."""
    return 1 if comm is None else int(comm.Get_size())


def cuda_aware() -> bool | None:
    """Whether the MPI library takes CUDA device buffers (``MPIX_Query_cuda_support``, which
    MPICH and Open MPI export); None when mpi4py is missing or the library does not say."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    del MPI  # (imported for its side effect: the MPI library is loaded and initialized)
    for path in _loaded_mpi_libraries():
        try:
            query = ctypes.CDLL(path).MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        query.restype = ctypes.c_int
        return bool(query())
    return None


def _loaded_mpi_libraries() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            found = {line.split()[-1] for line in maps if "libmpi" in line}
    except OSError:  # (not Linux) the symbol may still be global
        return [""] if sys.platform != "win32" else []
    return sorted(found)


def mpi_info() -> dict[str, Any]:
    """The MPI library in use: mpi4py's version, the library's own version line, the thread
    level, the world's size and this process's rank, and :func:`cuda_aware`."""
    try:
        import mpi4py
        from mpi4py import MPI
    except ImportError as exc:
        return {"available": False, "reason": str(exc)}
    return {"available": True, "mpi4py": mpi4py.__version__,
            "library": MPI.Get_library_version().splitlines()[0].strip(),
            "thread_level": MPI.Query_thread(), "size": MPI.COMM_WORLD.Get_size(),
            "rank": MPI.COMM_WORLD.Get_rank(), "cuda_aware": cuda_aware()}


# ---------------------------------------------------------------------- collectives
def _collective(what: str, comm: Any, call: Callable[[], Any]) -> Any:
    """Run one collective; an MPI error becomes a DistributedError naming it and the rank."""
    try:
        return call()
    except Exception as exc:  # mpi4py.MPI.Exception, or a communicator's own
        raise DistributedError(f"MPI {what} failed on rank {comm.Get_rank()} of "
                               f"{comm.Get_size()}: {exc}") from exc


def allgather(comm: Any, row: np.ndarray) -> np.ndarray:
    """Every process's ``row`` (same length and dtype everywhere), as a (size, len) array."""
    out = np.empty((comm.Get_size(), row.size), dtype=row.dtype)
    _collective("Allgather", comm, lambda: comm.Allgather(np.ascontiguousarray(row), out))
    return out


def allreduce_sum(comm: Any, values: np.ndarray) -> np.ndarray:
    """The element-wise sum of ``values`` over every process (same length everywhere)."""
    out = np.empty_like(values)
    from mpi4py import MPI

    _collective("Allreduce", comm, lambda: comm.Allreduce(np.ascontiguousarray(values), out,
                                                          op=MPI.SUM))
    return out


def agree(comm: Any, header: np.ndarray, error: BaseException | None, what: str) -> np.ndarray:
    """Exchange a small fixed-size int64 ``header`` (first element: 1 when this process is fine,
    0 when it holds ``error``) before a collective whose size depends on it. When any process
    failed, every process learns every failure's message (one more, rare collective) and raises:
    its own error when it has one, else a DistributedError naming the failed ranks."""
    table = allgather(comm, header.astype(np.int64))
    if table[:, 0].all():
        return table
    messages = _collective("allgather", comm, lambda: comm.allgather(
        None if error is None else f"{type(error).__name__}: {error}"))
    failed = "; ".join(f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None)
    if error is not None:
        raise error
    raise DistributedError(f"{what} failed on another process ({failed}); every process of the "
                           "communicator raises")


def merge_moments(table: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Merge per-process ``(count, mean[C], M2[C])`` rows (M2: sum of squared deviations from
    that process's mean) into the count, mean and M2 of the union, with Chan et al.'s pairwise
    formula, in rank order. Rows with count 0 are skipped (an empty batch divides nothing).

    Every process merges the same gathered rows in the same order, so each gets the same bits:
    the running statistics stay identical on every process (an Allreduce with a user-defined,
    non-associative operation would not guarantee that).

    >>> import numpy as np
    >>> rows = np.array([[2, 1.0, 2.0], [0, 0.0, 0.0], [1, 4.0, 0.0]])   # {0, 2}, {}, {4}
    >>> merge_moments(rows)
    (3.0, array([2.]), array([8.]))
    """
    c = (table.shape[1] - 1) // 2
    count, mean, m2 = 0.0, np.zeros(c), np.zeros(c)
    for row in np.asarray(table, dtype=np.float64):
        n_b = row[0]
        if n_b == 0:
            continue
        if count == 0:
            count, mean, m2 = n_b, row[1:c + 1].copy(), row[c + 1:].copy()
            continue
        total = count + n_b
        delta = row[1:c + 1] - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + row[c + 1:] + delta * delta * (count * n_b / total)
        count = total
    return float(count), mean, m2


# ---------------------------------------------------------------------- gradients
_NO_DESCENT = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
               types.MethodType, np.ndarray, np.generic, str, bytes, int, float, complex)
_LIBRARIES = {"builtins", "numpy", "torch", "jax", "jaxlib", "cupy", "mpi4py", "numba"}


def walk_modules(obj: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every normcore Module in ``obj``: the object itself, the items of lists, tuples and dicts,
    and the attributes of plain objects (a model class of your own), recursively, each once."""
    from .modules import Module

    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, _NO_DESCENT) or obj is None:
        return
    seen.add(id(obj))
    if isinstance(obj, Module):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from walk_modules(item, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from walk_modules(item, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] not in _LIBRARIES:
        for item in vars(obj).values():
            yield from walk_modules(item, seen)


def allreduce_gradients(model: Any, comm: Any | None = None, *, average: bool = False) -> None:
    """Add up the parameter gradients of every normcore module in ``model`` over the processes
    of ``comm`` (default ``MPI.COMM_WORLD``), in place, in one Allreduce.

    After SyncBatchNorm's backward each process holds the gradient of its own rows only (as
    torch's SyncBatchNorm); their sum is the gradient of the joined batch. ``average=True``
    divides by the number of processes, as torch's DistributedDataParallel does (the gradient of
    the mean of the processes' losses). A missing gradient counts as zeros and is set.

    >>> import numpy as np, normcore
    >>> bn = normcore.BatchNorm1d(2)
    >>> _ = bn(np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)); _ = bn.backward(np.ones((2, 2), np.float32))
    >>> allreduce_gradients(bn)          # one process: the gradients stay as they are
    >>> bn.bias.grad.tolist()
    [2.0, 2.0]
    """
    comm = default_comm() if comm is None else comm
    params = [(m.backend, p) for m in walk_modules(model) for p in m.parameters()]
    size = world_size(comm)
    if size == 1 and not average:
        return
    sizes = [int(np.prod(p.shape, dtype=np.int64)) for _, p in params]
    flat = np.zeros(sum(sizes), dtype=np.float64)
    at = 0
    for (be, p), n in zip(params, sizes, strict=True):
        if p.grad is not None:
            flat[at:at + n] = np.asarray(be.to_numpy(p.grad), dtype=np.float64).ravel()
        at += n
    if size > 1:
        table = agree(comm, np.array([1, flat.size]), None, "allreduce_gradients")
        if (table[:, 1] != flat.size).any():  # (checked first: Allreduce needs equal sizes)
            raise DistributedError(f"allreduce_gradients: the processes hold different numbers "
                                   f"of gradient values ({table[:, 1].tolist()}): every process "
                                   "must pass the same model")
        flat = allreduce_sum(comm, flat)
    if average:
        flat /= size
    at = 0
    for (be, p), n in zip(params, sizes, strict=True):
        p.grad = be.asarray(flat[at:at + n].reshape(p.shape).astype(p.dtype))
        at += n
