"""Conformance cases for the paths that write state (contract v2): the functional API's running
statistics, ``Dropout(inplace=True)``, the modules' buffers, and ``synchronize()``.

A backend of mutable arrays (``mutable = True``) must let ``F.batch_norm``/``F.instance_norm``
write the caller's running statistics in place, as torch does; a backend of immutable arrays
(JAX) leaves them as they are and the new ones are ``saved.running``. Either way no layer path
assigns into an array it was given, and the values equal the reference's.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

import normcore
from normcore import functional as F
from normcore.backend import Backend

from .cases import Case, _data, assert_close

_CH = ("channel_moments", "channel_normalize", "channel_normalize_backward", "running_update")
_GR = ("group_normalize", "group_normalize_backward", "running_update")


def _host(a: Any) -> np.ndarray:
    return np.array(normcore.to_numpy(a), dtype=np.float64)


def _functional_running_case(op: str, momentum: float, backend: Backend) -> None:
    dtype = np.float32
    x = _data((4, 3, 6), dtype, op, "running")
    rm0 = _data((3,), dtype, op, "rm", offset=0.0)
    rv0 = np.abs(_data((3,), dtype, op, "rv", offset=1.0)) + 0.5
    fn = F.batch_norm if op == "batch_norm" else F.instance_norm
    kwargs = {"training": True} if op == "batch_norm" else {"use_input_stats": True}
    ref_m, ref_v = rm0.copy(), rv0.copy()
    want_y, _ = fn(x, ref_m, ref_v, momentum=momentum, backend="numpy", **kwargs)
    rm, rv = backend.asarray(rm0.copy()), backend.asarray(rv0.copy())
    y, saved = fn(backend.asarray(x), rm, rv, momentum=momentum, backend=backend, **kwargs)
    assert_close(y, want_y, dtype, f"{op} output")
    if saved.running is None:
        raise AssertionError(f"{op}: saved.running is None after a training call with running "
                             "statistics")
    assert_close(saved.running.mean, ref_m, dtype, f"{op} saved.running.mean")
    assert_close(saved.running.var, ref_v, dtype, f"{op} saved.running.var")
    if backend.mutable:  # torch's semantics: the caller's arrays now hold the new statistics
        assert_close(rm, ref_m, dtype, f"{op} running_mean updated in place")
        assert_close(rv, ref_v, dtype, f"{op} running_var updated in place")
    else:  # immutable arrays: the caller's are what they were
        if not (np.array_equal(_host(rm), rm0) and np.array_equal(_host(rv), rv0)):
            raise AssertionError(f"{op}: an immutable backend's running statistics changed")


def _module_buffers_case(backend: Backend) -> None:
    """Modules replace their buffers with the arrays the kernels return: an array taken from a
    module before a training step is never written."""
    dtype = np.float32
    x = _data((5, 3, 4), dtype, "module-buffers")
    bn = normcore.BatchNorm1d(3, backend=backend)
    before = bn.running_mean
    snapshot = _host(before)
    bn(backend.asarray(x))
    if not np.array_equal(_host(before), snapshot):
        raise AssertionError("a module wrote into the running_mean array it held before the step")
    ref = normcore.BatchNorm1d(3, backend="numpy")
    ref(x)
    assert_close(bn.running_mean, ref.running_mean, dtype, "BatchNorm1d running_mean")


def _dropout_inplace_case(backend: Backend) -> None:
    dtype = np.float32
    x0 = _data((4, 9), dtype, "dropout-inplace")
    x = backend.asarray(x0.copy())
    drop = normcore.Dropout(0.5, inplace=True, seed=11, backend=backend)
    state = drop.rng.bit_generator.state
    want, _ = F.dropout(x0, 0.5, seed=int(np.random.default_rng(11).integers(0, 2**63)),
                        backend="numpy")
    if backend.mutable and backend.writable(x):
        y = drop(x)
        if y is not x:
            raise AssertionError("Dropout(inplace=True) returned a new array, not its input")
        assert_close(x, want, dtype, "Dropout(inplace=True) input after the call")
        return
    try:
        drop(x)
    except ValueError:
        pass
    else:
        raise AssertionError("Dropout(inplace=True) on an array that cannot be written did not "
                             "raise ValueError")
    if drop.rng.bit_generator.state != state:
        raise AssertionError("a refused Dropout(inplace=True) call advanced the RNG")
    if not np.array_equal(_host(x), x0):
        raise AssertionError("a refused Dropout(inplace=True) call changed its input")


def _synchronize_case(backend: Backend) -> None:
    y, _ = F.layer_norm(backend.asarray(_data((3, 8), np.float32, "sync")), 8, backend=backend)
    if backend.synchronize() is not None:
        raise AssertionError("synchronize() returned a value; it returns None")
    assert_close(y, F.layer_norm(_data((3, 8), np.float32, "sync"), 8, backend="numpy")[0],
                 np.float32, "layer_norm after synchronize()")


def state_cases() -> list[Case]:
    cases = []
    for op, kernels in (("batch_norm", _CH), ("instance_norm", _GR)):
        for momentum in (0.1, 1.0):
            cases.append(Case(f"state:functional-running:{op}:momentum={momentum}",
                              functools.partial(_functional_running_case, op, momentum),
                              kernels))
    cases.append(Case("state:module-buffers-never-written", _module_buffers_case, _CH))
    cases.append(Case("state:dropout-inplace", _dropout_inplace_case, ("dropout",)))
    cases.append(Case("state:synchronize", _synchronize_case,
                      ("group_normalize", "group_normalize_backward")))
    return cases
