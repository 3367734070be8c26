"""SyncBatchNorm scenarios run under ``mpiexec -n N`` by tests/test_sync_batchnorm.py.

Every process builds the same joined batches from one seed, takes its rows of a random uneven
split, and compares what SyncBatchNorm gives it with single-process BatchNorm on the joined batch
(same backend): output, input gradient, parameter gradients after
``normcore.distributed.allreduce_gradients``, running statistics and ``num_batches_tracked``
(also identical, bit for bit, on every process). Each process writes one JSON line per scenario
to ``OUT_DIR/rank{r}.jsonl``. Importing this file runs nothing (pytest imports it for doctests).

    mpiexec -n 4 python tests/mpi_sync_worker.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

#: float64 to 1e-12, float32 to 1e-5 (max-norm relative error), as issue #32 asks.
RTOL = {np.float64: 1e-12, np.float32: 1e-5}


class Fail(AssertionError):
    pass


def close(got: Any, want: Any, dtype: Any, what: str, errors: list[str] | None = None,
          rtol: float | None = None) -> None:
    """Raise when ``got`` is not ``want`` to the dtype's tolerance (or append to ``errors``: a
    process that stopped early would leave the others waiting in the next collective)."""
    if errors is not None:
        try:
            close(got, want, dtype, what, rtol=rtol)
        except Fail as exc:
            errors.append(str(exc))
        return
    import normcore

    g = np.asarray(normcore.to_numpy(got), dtype=np.float64)
    w = np.asarray(normcore.to_numpy(want), dtype=np.float64)
    if g.shape != w.shape:
        raise Fail(f"{what}: shape {g.shape}, expected {w.shape}")
    err = float(np.abs(g - w).max(initial=0.0))
    scale = max(float(np.abs(w).max(initial=0.0)), 1e-300)
    rtol = RTOL[dtype] if rtol is None else rtol
    if not err <= rtol * scale:
        raise Fail(f"{what}: relative error {err / scale:.3g} > {rtol}")


def cuts(rng: np.random.Generator, n: int, size: int) -> list[int]:
    """Random uneven split points of n rows over size processes (empty parts allowed)."""
    inner = sorted(rng.integers(0, n + 1, size - 1).tolist())
    return [0, *inner, n]


def same_everywhere(comm: Any, arr: Any, what: str) -> None:
    import normcore

    mine = np.ascontiguousarray(normcore.to_numpy(arr)).tobytes()
    if len(set(comm.allgather(mine))) != 1:
        raise Fail(f"{what} differs between processes")


def run_steps(comm: Any, make: Callable[..., Any], shape: tuple[int, ...], dtype: Any,
              steps: int, seed: int, backend: str = "numpy", split: list[int] | None = None,
              **kwargs: Any) -> None:
    """Training steps then one evaluation step, SyncBatchNorm against BatchNorm on the joined
    batch."""
    import normcore
    from normcore.distributed import allreduce_gradients

    r, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(seed)
    sync = normcore.SyncBatchNorm(shape[1], comm=comm, backend=backend, dtype=dtype, **kwargs)
    ref = make(shape[1], backend=backend, dtype=dtype, **kwargs)
    for step in range(steps + 1):
        if step == steps:
            sync.eval()
            ref.eval()
        x = rng.normal(0.5, 1.5, shape).astype(dtype)
        dy = rng.normal(0.0, 1.0, shape).astype(dtype)
        at = split if split is not None else cuts(rng, shape[0], size)
        rows = slice(at[r], at[r + 1])
        sync.zero_grad()
        ref.zero_grad()
        y = sync(x[rows])
        dx = sync.backward(dy[rows])
        y_ref = ref(x)
        dx_ref = ref.backward(dy)
        where = f"step {step} rows {at}"
        errors: list[str] = []
        close(y, y_ref[rows], dtype, f"{where} output", errors)
        close(dx, dx_ref[rows], dtype, f"{where} dx", errors)
        allreduce_gradients(sync, comm)  # (in evaluation too: gradients are local sums)
        for name in ("weight", "bias"):
            p, q = getattr(sync, name), getattr(ref, name)
            if (p is None) != (q is None):
                errors.append(f"{name}: present on one side only")
            elif p is not None:
                close(p.grad, q.grad, dtype, f"{where} {name}.grad", errors)
        state, want = sync.state_dict(), ref.state_dict()
        if sorted(state) != sorted(want):
            errors.append(f"state_dict keys {sorted(state)} != {sorted(want)}")
        for key in sorted(state):
            if key == "num_batches_tracked":
                if int(state[key]) != int(want[key]):
                    errors.append(f"num_batches_tracked {int(state[key])} != {int(want[key])}")
            elif key.startswith("running"):
                close(state[key], want[key], dtype, f"{where} {key}", errors)
            try:
                same_everywhere(comm, state[key], f"{where} {key}")
            except Fail as exc:
                errors.append(str(exc))
        if errors:
            raise Fail("; ".join(errors))


def expect_error(comm: Any, call: Callable[[], Any], mine: type, others: type,
                 text: str) -> None:
    """Every process raises: ``mine`` on the ones that erred, ``others`` elsewhere."""
    try:
        call()
    except (mine, others) as exc:
        if text not in str(exc):
            raise Fail(f"error without {text!r}: {type(exc).__name__}: {exc}") from exc
        return
    raise Fail("no error raised")


# ---------------------------------------------------------------------- scenarios
def s_bn1d_float64(comm):
    import normcore
    run_steps(comm, normcore.BatchNorm1d, (13, 3), np.float64, 3, 1)


def s_bn1d_ncl_float32_momentum_none(comm):
    import normcore
    run_steps(comm, normcore.BatchNorm1d, (11, 4, 6), np.float32, 3, 2, momentum=None)


def s_bn2d_float32(comm):
    import normcore
    run_steps(comm, normcore.BatchNorm2d, (9, 5, 3, 4), np.float32, 2, 3)


def s_bn3d_float64(comm):
    import normcore
    run_steps(comm, normcore.BatchNorm3d, (7, 2, 2, 3, 2), np.float64, 2, 4)


def s_no_affine_no_tracking(comm):
    # evaluation without running statistics normalizes by the local batch (torch: no sync in
    # eval), so only training compares with the joined batch
    _no_tracking(comm)


def _no_tracking(comm):
    import normcore
    r, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(6)
    x = rng.normal(0.5, 1.5, (10, 3))
    at = cuts(rng, 10, size)
    rows = slice(at[r], at[r + 1])
    sync = normcore.SyncBatchNorm(3, affine=False, track_running_stats=False, comm=comm,
                                  backend="numpy", dtype=np.float64)
    ref = normcore.BatchNorm1d(3, affine=False, track_running_stats=False, backend="numpy",
                               dtype=np.float64)
    close(sync(x[rows]), ref(x)[rows], np.float64, "training output")
    if sorted(sync.state_dict()) != sorted(ref.state_dict()) or sync.state_dict():
        raise Fail(f"state_dict {sorted(sync.state_dict())}")
    sync.eval()
    if at[r + 1] - at[r] > 1:
        close(sync(x[rows]), ref(x[rows]), np.float64, "evaluation output (local batch)")


def s_bias_false(comm):
    import normcore
    run_steps(comm, normcore.BatchNorm2d, (6, 3, 2, 2), np.float32, 2, 7, bias=False)


def s_empty_rank(comm):
    import normcore
    size = comm.Get_size()
    # rank 0 has no rows; the others share 9
    split = [0, 0, *(round(9 * k / (size - 1)) for k in range(1, size))] if size > 1 else [0, 9]
    run_steps(comm, normcore.BatchNorm2d, (9, 3, 2, 2), np.float64, 2, 8, split=split)


def s_eval_no_communication(comm):
    import normcore
    counting = Counting(comm)
    bn = normcore.SyncBatchNorm(3, comm=counting, backend="numpy", dtype=np.float64)
    x = np.random.default_rng(9).normal(size=(4, 3, 2))
    bn(x)
    bn.backward(np.ones_like(x))
    trained = counting.calls
    if comm.Get_size() > 1 and trained != 3:  # header, statistics, backward sums
        raise Fail(f"a training step made {trained} collectives, expected 3")
    bn.eval()
    ref = normcore.BatchNorm1d(3, backend="numpy", dtype=np.float64)
    ref.load_state_dict(bn.state_dict())
    ref.eval()
    close(bn(x), ref(x), np.float64, "evaluation output")
    close(bn.backward(np.ones_like(x)), ref.backward(np.ones_like(x)), np.float64, "eval dx")
    if counting.calls != trained:
        raise Fail(f"evaluation made {counting.calls - trained} collectives")


class Counting:
    """A communicator that counts its collectives (everything else passes through)."""

    def __init__(self, comm):
        self.comm, self.calls = comm, 0

    def __getattr__(self, name):
        attr = getattr(self.comm, name)
        if name[:1].isupper() and name not in ("Get_size", "Get_rank") or name == "allgather":
            def counted(*a, **k):
                self.calls += 1
                return attr(*a, **k)
            return counted
        return attr


def s_error_channels(comm):
    import normcore
    from normcore import ShapeError
    from normcore.distributed import DistributedError
    r, size = comm.Get_rank(), comm.Get_size()
    bn = normcore.SyncBatchNorm(3, comm=comm, backend="numpy", dtype=np.float64)
    bad = r == size - 1
    x = np.ones((2, 4 if bad else 3, 2)) * np.arange(2)
    expect_error(comm, lambda: bn(x), ShapeError, DistributedError, "channels")
    if int(bn.num_batches_tracked) != 0:
        raise Fail("a failed forward changed num_batches_tracked")
    # the same layers go on: nothing is left half-way in MPI
    good = np.random.default_rng(r).normal(size=(3, 3, 2))
    bn(good)
    bn.backward(good)
    # a layer of another size on one process: every process raises
    other = normcore.SyncBatchNorm(4 if bad else 3, comm=comm, backend="numpy", dtype=np.float64)
    if size > 1:
        expect_error(comm, lambda: other(np.ones((2, 4 if bad else 3)) * [[0], [1]]),
                     ShapeError, DistributedError, "differ in channels")
    # a dtype of its own on one process
    x32 = good.astype(np.float32 if bad else np.float64)
    expect_error(comm, lambda: bn(x32), normcore.DTypeError, DistributedError, "dtype")


def s_error_backward(comm):
    import normcore
    from normcore import ShapeError
    from normcore.distributed import DistributedError
    r = comm.Get_rank()
    bn = normcore.SyncBatchNorm(3, comm=comm, backend="numpy", dtype=np.float64)
    x = np.random.default_rng(10 + r).normal(size=(3, 3, 2))
    bn(x)
    dy = np.ones((3, 3, 3)) if r == 0 else np.ones_like(x)
    expect_error(comm, lambda: bn.backward(dy), ShapeError, DistributedError, "")
    bn(x)
    bn.backward(np.ones_like(x))  # the next step works everywhere


def s_counts_one_and_zero(comm):
    import normcore
    r = comm.Get_rank()
    bn = normcore.SyncBatchNorm(2, comm=comm, backend="numpy", dtype=np.float64)
    one = np.ones((1 if r == 0 else 0, 2))
    expect_error(comm, lambda: bn(one), ValueError, ValueError, "more than 1 value per channel")
    y = bn(np.ones((0, 2)))
    dx = bn.backward(np.ones((0, 2)))
    if y.shape != (0, 2) or dx.shape != (0, 2) or int(bn.num_batches_tracked) != 1:
        raise Fail(f"empty batch everywhere: {y.shape}, {dx.shape}, {int(bn.num_batches_tracked)}")
    close(bn.running_mean, np.zeros(2), np.float64, "running_mean")


def s_convert_model(comm):
    import normcore
    from normcore.distributed import allreduce_gradients

    class Net:
        def __init__(self):
            self.blocks = [normcore.BatchNorm2d(3, dtype=np.float64), normcore.LayerNorm(2)]
            self.head = normcore.BatchNorm1d(3, momentum=None, dtype=np.float64)

    r, size = comm.Get_rank(), comm.Get_size()
    net, ref = Net(), Net()
    same = net.blocks[0].weight
    out = normcore.SyncBatchNorm.convert_sync_batchnorm(net, comm)
    if out is not net or type(net.blocks[0]).__name__ != "SyncBatchNorm" or \
            type(net.head).__name__ != "SyncBatchNorm" or net.blocks[0].weight is not same or \
            type(net.blocks[1]).__name__ != "LayerNorm":
        raise Fail("convert_sync_batchnorm did not convert in place")
    rng = np.random.default_rng(11)
    for step in range(2):
        x = rng.normal(size=(8, 3, 2, 2))
        at = cuts(rng, 8, size)
        rows = slice(at[r], at[r + 1])
        dy = rng.normal(size=(8, 3))
        y = net.head(net.blocks[0](x[rows]).mean(axis=(2, 3)))
        g = net.head.backward(dy[rows])[:, :, None, None] / 4
        dx = net.blocks[0].backward(np.broadcast_to(g, g.shape[:2] + (2, 2)).copy())
        y_ref = ref.head(ref.blocks[0](x).mean(axis=(2, 3)))
        g = ref.head.backward(dy)[:, :, None, None] / 4
        dx_ref = ref.blocks[0].backward(np.broadcast_to(g, g.shape[:2] + (2, 2)).copy())
        close(y, y_ref[rows], np.float64, f"step {step} model output")
        close(dx, dx_ref[rows], np.float64, f"step {step} model dx")
    allreduce_gradients(net, comm)
    for a, b in ((net.blocks[0], ref.blocks[0]), (net.head, ref.head)):
        # the first layer's dy is the head's dx, itself a difference of terms of |dy|'s size,
        # and its weight.grad a sum of both signs: rounding grows along the chain
        close(a.weight.grad, b.weight.grad, np.float64, "model weight.grad", rtol=1e-10)
        close(a.running_var, b.running_var, np.float64, "model running_var")


def s_sub_communicator(comm):
    import normcore
    group = comm.Split(comm.Get_rank() % 2, comm.Get_rank())
    try:
        run_steps(group, normcore.BatchNorm1d, (8, 3, 3), np.float64, 2, 12 + comm.Get_rank() % 2)
    finally:
        group.Free()


def s_backend_numba(comm):
    _other_backend(comm, "numba")


def s_backend_array_api(comm):
    _other_backend(comm, "array-api")


def _other_backend(comm, name):
    import normcore
    available = {b.name for b in normcore.list_backends(check=True) if b.available}
    if name not in available:
        return f"skipped: backend {name!r} unavailable"
    run_steps(comm, normcore.BatchNorm2d, (9, 4, 3, 3), np.float32, 2, 13, backend=name)
    run_steps(comm, normcore.BatchNorm1d, (7, 3, 5), np.float64, 1, 14, backend=name)
    return None


SCENARIOS: dict[str, Callable[[Any], Any]] = {
    name[2:]: fn for name, fn in dict(globals()).items() if name.startswith("s_")}


def main(out_dir: str, only: list[str]) -> int:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    r = comm.Get_rank()
    with open(f"{out_dir}/rank{r}.jsonl", "w") as out:
        for name, fn in SCENARIOS.items():
            if only and name not in only:
                continue
            try:
                note = fn(comm)
                result = {"ok": True, "detail": note or ""}
            except Exception as exc:
                result = {"ok": False, "detail": f"{type(exc).__name__}: {exc}\n"
                                                 f"{traceback.format_exc(limit=4)}"}
            out.write(json.dumps({"rank": r, "size": comm.Get_size(), "scenario": name,
                                  **result}) + "\n")
            out.flush()
            comm.Barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
