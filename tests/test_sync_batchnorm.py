"""SyncBatchNorm (#32): under ``mpiexec -n 1/2/3/4`` on loopback, every process's output, input
gradient, parameter gradients (after the gradient all-reduce), running statistics and
``num_batches_tracked`` equal single-process BatchNorm on the joined batch (scenarios in
tests/mpi_sync_worker.py, one launch per process count); and, in this process, what needs no MPI.

Each launch has a timeout and its process group is killed when it passes: a hang fails the test
instead of blocking the run.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import normcore
from normcore import distributed

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "mpi_sync_worker.py"
TIMEOUT_S = 240  # a launch of 4 processes on 2 cores takes ~15 s


def _mpiexec() -> str | None:
    local = pathlib.Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and MPIEXEC is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="mpi4py or mpiexec not installed (make setup "
                               "installs them: pip install 'normcore[mpi]')")


def _scenarios() -> list[str]:
    spec = importlib.util.spec_from_file_location("mpi_sync_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.SCENARIOS)


SCENARIOS = _scenarios()


def _launch(n: int, out: pathlib.Path) -> dict[str, list[dict]]:
    env = dict(os.environ, NORMCORE_LOG="", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([MPIEXEC, "-n", str(n), sys.executable, str(WORKER), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {n} did not finish in {TIMEOUT_S} s (a hang): "
                    f"{output.decode(errors='replace')[-3000:]}\n{_read(out)}")
    if proc.returncode:
        pytest.fail(f"mpiexec -n {n} exited {proc.returncode}: "
                    f"{output.decode(errors='replace')[-3000:]}")
    return _read(out)


def _read(out: pathlib.Path) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for path in sorted(out.glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            results.setdefault(row["scenario"], []).append(row)
    return results


@pytest.fixture(scope="module", params=[1, 2, 3, 4], ids=lambda n: f"np{n}")
def launched(request, tmp_path_factory):
    n = request.param
    return n, _launch(n, tmp_path_factory.mktemp(f"mpi{n}"))


@needs_mpi
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_mpi_scenario(launched, scenario):
    n, results = launched
    rows = results.get(scenario, [])
    assert sorted(r["rank"] for r in rows) == list(range(n)), f"ranks reporting: {rows}"
    failed = [f"rank {r['rank']}: {r['detail']}" for r in rows if not r["ok"]]
    assert not failed, "\n".join(failed)
    notes = {r["detail"] for r in rows if r["detail"]}
    if notes:
        pytest.skip("; ".join(sorted(notes)))


# ---------------------------------------------------------------------- without mpiexec
def test_import_does_not_import_mpi4py():
    code = "import sys, normcore; normcore.SyncBatchNorm(3); print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_state_dict_keys_are_torchs():
    torch = pytest.importorskip("torch")
    for kwargs in ({}, {"affine": False}, {"track_running_stats": False}, {"bias": False}):
        torch_kwargs = {k: v for k, v in kwargs.items() if k != "bias"}
        want = torch.nn.SyncBatchNorm(4, **torch_kwargs)
        if kwargs.get("bias") is False:
            want.bias = None
        ours = normcore.SyncBatchNorm(4, **kwargs)
        assert sorted(ours.state_dict()) == sorted(want.state_dict()), kwargs
    # torch's state loads into ours and ours into torch's
    t = torch.nn.SyncBatchNorm(4)
    ours = normcore.SyncBatchNorm(4)
    ours.load_state_dict(t.state_dict())
    t.load_state_dict({k: torch.as_tensor(v) for k, v in ours.state_dict().items()})


def test_one_process_without_mpi_is_batchnorm(monkeypatch, rng):
    """No mpi4py and no launcher: a world of one, bit for bit BatchNorm (train and eval)."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    for var in distributed.LAUNCHER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    sync, ref = normcore.SyncBatchNorm(3, momentum=None), normcore.BatchNorm2d(3, momentum=None)
    for step in range(3):
        if step == 2:
            sync.eval(), ref.eval()
        x = rng.normal(0.5, 2.0, (4, 3, 2, 5)).astype(np.float32)
        dy = rng.normal(size=x.shape).astype(np.float32)
        np.testing.assert_array_equal(sync(x), ref(x))
        np.testing.assert_array_equal(sync.backward(dy), ref.backward(dy))
        for key, value in ref.state_dict().items():
            np.testing.assert_array_equal(sync.state_dict()[key], value)
    monkeypatch.setenv("PMI_RANK", "0")  # started by mpiexec, but mpi4py missing: refused
    with pytest.raises(ImportError, match="normcore\\[mpi\\]"):
        normcore.SyncBatchNorm(3)(np.ones((2, 3), np.float32))


def test_input_rank_and_errors():
    bn = normcore.SyncBatchNorm(2, dtype=np.float64).eval()
    for shape in ((3, 2), (3, 2, 4), (3, 2, 2, 2), (3, 2, 1, 2, 2), (2, 2, 1, 1, 1, 2)):
        assert bn(np.ones(shape)).shape == shape  # any rank >= 2, as torch's
    with pytest.raises(normcore.ShapeError, match="at least 2D"):
        bn(np.ones(3))
    with pytest.raises(normcore.ShapeError, match="2 channels"):
        bn(np.ones((2, 3)))


def test_merge_moments_equals_one_pass(rng):
    x = rng.normal(3.0, 2.0, (40, 5))
    for cut in ([0, 0, 40], [0, 1, 2, 39, 40], [0, 17, 17, 40], [0, 40, 40, 40]):
        rows = []
        for a, b in zip(cut[:-1], cut[1:], strict=True):
            part = x[a:b]
            n = len(part)
            mean = part.mean(0) if n else np.zeros(5)
            rows.append([n, *mean, *(((part - mean) ** 2).sum(0) if n else np.zeros(5))])
        count, mean, m2 = distributed.merge_moments(np.array(rows))
        assert count == 40
        np.testing.assert_allclose(mean, x.mean(0), rtol=1e-14)
        np.testing.assert_allclose(m2 / count, x.var(0), rtol=1e-13)
    assert distributed.merge_moments(np.zeros((3, 11)))[0] == 0.0


def test_convert_sync_batchnorm_shares_state():
    bn = normcore.BatchNorm1d(3, momentum=None, affine=True, bias=False, dtype=np.float64)
    bn.eval()
    sync = normcore.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert isinstance(sync, normcore.SyncBatchNorm) and not sync.training
    assert sync.weight is bn.weight and sync.bias is None and sync.momentum is None
    assert sync.running_mean is bn.running_mean and sync.dtype == np.float64
    assert sync.backend is bn.backend
    again = normcore.SyncBatchNorm.convert_sync_batchnorm(sync)
    assert again is sync
    ln = normcore.LayerNorm(3)
    model = [bn, (ln, normcore.BatchNorm2d(3)), {"x": normcore.BatchNorm3d(3)}]
    model.append(model)  # a cycle is fine
    out = normcore.SyncBatchNorm.convert_sync_batchnorm(model)
    assert out is model and type(model[0]) is normcore.SyncBatchNorm
    assert model[1][0] is ln and type(model[1][1]) is normcore.SyncBatchNorm
    assert type(model[2]["x"]) is normcore.SyncBatchNorm


def test_copies_leave_the_communicator_out():
    class FakeComm:
        def __reduce__(self):
            raise TypeError("a communicator cannot be pickled")

    bn = normcore.SyncBatchNorm(3, comm=FakeComm())
    for clone in (copy.deepcopy(bn), pickle.loads(pickle.dumps(bn))):
        assert clone.comm is None and clone.num_features == 3
    assert bn.comm is not None


def test_allreduce_gradients_one_process():
    bn = normcore.BatchNorm1d(2, dtype=np.float64)
    bn(np.array([[1.0, 2.0], [3.0, 5.0]]))
    bn.backward(np.array([[1.0, 2.0], [3.0, 4.0]]))
    before = bn.bias.grad.copy()
    distributed.allreduce_gradients([bn], comm=None)
    np.testing.assert_array_equal(bn.bias.grad, before)
    distributed.allreduce_gradients([bn], comm=None, average=True)  # / 1
    np.testing.assert_array_equal(bn.bias.grad, before)
