"""The layers' fast path: a call repeated with an input of the same shape and dtype skips the
checks that input already passed.

After a successful forward on a NumPy array, :func:`build` leaves a *plan* for that input's
(shape, dtype) in the layer's ``_fast`` dict: a function that repeats that forward's work (the
same kernels with the same arguments, the same :class:`~normcore._saved.Saved`, the same
running-statistics commit under the layer lock) without the validation that depends only on
the input's shape and dtype and the layer's attributes. What can change without an attribute
assignment is checked on every call, as the general path checks it: the parameters (``p.data``
replaced by an optimizer, a Parameter swapped in ``_params``), the running statistics and
``num_batches_tracked``, and whether the backend takes the array as its own; anything unusual
returns :data:`MISS` and the call takes the general path, which raises what it raises.

Any attribute assignment on the layer (``eps``, ``momentum``, ``training``, ``backend`` through
``.to()``, a parameter or buffer) gives the layer a new, empty ``_fast`` dict (see
``Module.__setattr__``); a plan being built meanwhile goes into the old dict, which nothing reads.
A subclass that overrides any method the plan stands for gets no plan.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import registry
from ._saved import RunningUpdate, Saved, quick_saved
from .backend import Backend

MISS = object()
Plan = Any  # a function (module, input) -> output, or MISS

#: Plans kept per layer (one per input shape and dtype); the dict is emptied when full.
MAX_PLANS = 8
_ndarray = np.ndarray


def _miss(m: Any, x: Any) -> Any:
    return MISS


def _kernel(be: Any, name: str) -> Any:
    return getattr(be, name) if name in be.kernels else registry.kernel(be, name)


def _param(params: dict[str, Any], name: str, dtype: Any, shape: tuple[int, ...]) -> Any:
    """The parameter's array when it passes the general path's quick check (MISS otherwise)."""
    p = params.get(name)
    if p is None:
        return None
    d = p.data
    if type(d) is _ndarray and d.dtype == dtype and d.shape == shape:
        return d
    return MISS


def _stat(v: Any, dtype: Any, shape: tuple[int, ...]) -> bool:
    return type(v) is _ndarray and v.dtype == dtype and v.shape == shape


def _reshaper(be: Backend) -> Any:
    """``be.reshape``, or ndarray's own method where that is all it does (a call less)."""
    if type(be).reshape is Backend.reshape and "reshape" not in vars(be):
        return _ndarray.reshape
    return be.reshape


class _Views:
    """A parameter's view in a kernel's layout, kept while the parameter's array is the same
    object (a replaced ``p.data`` gets a new view; an in-place write shows through the view)."""

    __slots__ = ("reshape", "shape", "last")

    def __init__(self, reshape: Any, shape: tuple[int, ...]) -> None:
        self.reshape, self.shape, self.last = reshape, shape, (None, None)

    def __call__(self, d: Any) -> Any:
        if d is None:
            return None
        last = self.last  # (one tuple: threads see a matching pair)
        if last[0] is d:
            return last[1]
        view = self.reshape(d, self.shape)
        self.last = (d, view)
        return view


def _template(op: str, be: Backend, shape: tuple[int, ...], dtype: Any, eps: float
              ) -> dict[str, Any]:
    return quick_saved(op, be, shape, dtype, None, None, None, eps, None, None, False,
                       {}).__dict__


_new = object.__new__


def _saved(tmpl: dict[str, Any], x: Any, mean: Any, var: Any, weight: Any, weight_shape: Any,
           has_bias: bool, extra: dict[str, Any], running: Any = None) -> Saved:
    s = _new(Saved)
    d = tmpl.copy()
    d["x"], d["mean"], d["var"], d["weight"] = x, mean, var, weight
    d["weight_shape"], d["has_bias"], d["extra"], d["running"] = (weight_shape, has_bias, extra,
                                                                  running)
    s.__dict__ = d
    return s


def _update(mean: Any, var: Any) -> RunningUpdate:
    u = _new(RunningUpdate)
    u.__dict__ = {"mean": mean, "var": var}
    return u


# ---------------------------------------------------------------------- row and group norms
def _group_view(be: Backend, shape: tuple[int, ...], dtype: Any, op: str, eps: float,
                view: tuple[int, ...], pview: tuple[int, ...], pshape: tuple[int, ...],
                center: bool, with_bias: bool) -> Plan:
    """The plan of a layer on the group view (LayerNorm, RMSNorm, GroupNorm): x as ``view``,
    parameters of ``pshape`` as ``pview``, one ``group_normalize``."""
    reshape = _reshaper(be)
    wview, bview = _Views(reshape, pview), _Views(reshape, pview)
    tmpl = _template(op, be, shape, dtype, eps)
    extra = {"center": center}

    def run(m: Any, x: np.ndarray) -> Any:
        if not be.is_native(x):
            return MISS
        params = m._params
        wd = _param(params, "weight", dtype, pshape)
        bd = _param(params, "bias", dtype, pshape) if with_bias else None
        if wd is MISS or bd is MISS:
            return MISS
        x4 = reshape(x, view)
        w2 = wview(wd)
        y, mean, var = _kernel(be, "group_normalize")(x4, w2, bview(bd), eps, center)
        m._local.saved = _saved(tmpl, x4, mean, var, w2, None if wd is None else pshape,
                                bd is not None, dict(extra))
        return reshape(y, shape)

    return run


def _rows(m: Any, x: np.ndarray, rms: bool) -> Plan | None:
    shape, dtype = x.shape, x.dtype
    nshape = m.normalized_shape
    if type(nshape) is not tuple or not nshape or any(type(s) is not int for s in nshape):
        return None
    eps = m.eps
    if rms and eps is None:
        eps = float(np.finfo(np.promote_types(dtype, np.float32)).eps)
    if type(eps) is not float:
        return None
    cols = math.prod(nshape)
    return _group_view(m.backend, shape, dtype, "rms_norm" if rms else "layer_norm", eps,
                       (x.size // cols, 1, cols, 1), (1, cols), nshape, not rms, not rms)


def _group(m: Any, x: np.ndarray) -> Plan | None:
    shape = x.shape
    groups, eps = m.num_groups, m.eps
    if type(groups) is not int or type(eps) is not float or len(shape) < 2:
        return None
    n_, c = shape[0], shape[1]
    return _group_view(m.backend, shape, x.dtype, "group_norm", eps,
                       (n_, groups, c // groups, math.prod(shape[2:])), (groups, c // groups),
                       (c,), True, True)


# ---------------------------------------------------------------------- batch norm
def _batch(m: Any, x: np.ndarray) -> Plan | None:
    be, shape, dtype = m.backend, x.shape, x.dtype
    eps, momentum = m.eps, m.momentum
    if type(eps) is not float or (momentum is not None and type(momentum) is not float):
        return None
    training, track = m.training, m.track_running_stats
    if type(training) is not bool or type(track) is not bool:
        return None
    buffers = m._buffers
    has_stats = buffers.get("running_mean") is not None
    n_, c = shape[0], shape[1]
    per_channel = x.size // c
    view, cshape = (n_, c, per_channel // n_), (c,)
    reshape, tmpl = _reshaper(be), _template("batch_norm", be, shape, dtype, eps)
    if training and track:
        if not has_stats:
            return None
        correction = per_channel / (per_channel - 1)
        return _batch_update(be, shape, dtype, view, cshape, eps, momentum, correction, reshape,
                             tmpl)
    use_batch = training or not has_stats

    def run(m: Any, x: np.ndarray) -> Any:
        if not be.is_native(x):
            return MISS
        params, buffers = m._params, m._buffers
        wd, bd = _param(params, "weight", dtype, cshape), _param(params, "bias", dtype, cshape)
        if wd is MISS or bd is MISS:
            return MISS
        rm, rv = buffers.get("running_mean"), buffers.get("running_var")
        x3 = reshape(x, view)
        if use_batch:
            if not training and (rm is not None or rv is not None):
                return MISS  # (statistics appeared: the general path decides)
            y, mean, var = _kernel(be, "channel_moments_normalize")(x3, eps, wd, bd)
        else:
            if not (_stat(rm, dtype, cshape) and _stat(rv, dtype, cshape)):
                return MISS
            mean, var = rm, rv
            y = _kernel(be, "channel_normalize")(x3, rm, rv, eps, wd, bd)
        y = reshape(y, shape)
        m._local.saved = _saved(tmpl, x3, mean, var, wd, None if wd is None else cshape,
                                bd is not None, {"batch_stats": use_batch})
        return y

    return run


def _batch_update(be: Any, shape: tuple[int, ...], dtype: Any, view: tuple[int, ...],
                  cshape: tuple[int, ...], eps: float, momentum: float | None,
                  correction: float, reshape: Any, tmpl: dict[str, Any]) -> Plan:
    """A training forward that updates the running statistics (under the layer lock)."""
    int64 = np.int64

    def run(m: Any, x: np.ndarray) -> Any:
        if not be.is_native(x):
            return MISS
        params, buffers = m._params, m._buffers
        wd, bd = _param(params, "weight", dtype, cshape), _param(params, "bias", dtype, cshape)
        if wd is MISS or bd is MISS:
            return MISS
        with m._lock:  # read, update and commit the running statistics as one step
            rm, rv = buffers.get("running_mean"), buffers.get("running_var")
            count = buffers.get("num_batches_tracked")
            if not (_stat(rm, dtype, cshape) and _stat(rv, dtype, cshape)
                    and type(count) is _ndarray):
                return MISS
            tracked = int(count) + 1
            factor = 1.0 / tracked if momentum is None else momentum
            x3 = reshape(x, view)
            y, mean, var, new_mean, new_var = _kernel(be, "channel_moments_normalize_update")(
                x3, eps, wd, bd, rm, rv, factor, correction)
            y = reshape(y, shape)
            saved = _saved(tmpl, x3, mean, var, wd, None if wd is None else cshape,
                           bd is not None, {"batch_stats": True}, _update(new_mean, new_var))
            buffers["num_batches_tracked"] = np.array(tracked, dtype=int64)
            buffers.update(running_mean=new_mean, running_var=new_var)
            m._local.saved = saved
        return y

    return run


# ---------------------------------------------------------------------- instance norm
def _instance(m: Any, x: np.ndarray) -> Plan | None:
    be, shape, dtype = m.backend, x.shape, x.dtype
    eps, momentum = m.eps, m.momentum
    training, track = m.training, m.track_running_stats
    if (type(eps) is not float or eps == 0 or type(training) is not bool
            or type(track) is not bool or (momentum is not None and type(momentum) is not float)):
        return None  # (eps == 0 mends constant planes on the host: the general path)
    unbatched = len(shape) == m._dims[0]
    xshape = (1,) + shape if unbatched else shape
    n_, c = xshape[0], xshape[1]
    if c != m.num_features:
        return None  # (warns on every call: the general path)
    buffers = m._buffers
    has_stats = buffers.get("running_mean") is not None
    use_input_stats = training or not track
    if not use_input_stats and not has_stats:
        return None
    locked = training and track
    momentum = 0.0 if momentum is None else momentum
    spatial = math.prod(xshape[2:])
    cshape, c1 = (c,), (c, 1)
    view = (n_, c, 1, spatial) if use_input_stats else (n_, c, spatial)
    correction = spatial / (spatial - 1) if use_input_stats else 0.0
    unbatched_shape = shape if unbatched else None
    reshape, tmpl = _reshaper(be), _template("instance_norm", be, xshape, dtype, eps)

    def run(m: Any, x: np.ndarray) -> Any:
        if not be.is_native(x):
            return MISS
        params, buffers = m._params, m._buffers
        wd, bd = _param(params, "weight", dtype, cshape), _param(params, "bias", dtype, cshape)
        if wd is MISS or bd is MISS:
            return MISS
        if locked:
            with m._lock:  # read, update and commit the running statistics as one step
                y = forward(m, x, buffers, wd, bd)
        else:
            y = forward(m, x, buffers, wd, bd)
        return y

    def forward(m: Any, x: np.ndarray, buffers: dict[str, Any], wd: Any, bd: Any) -> Any:
        rm, rv = buffers.get("running_mean"), buffers.get("running_var")
        if rm is None and rv is None:
            if not use_input_stats:
                return MISS
        elif not (_stat(rm, dtype, cshape) and _stat(rv, dtype, cshape)):
            return MISS
        x_ = reshape(x, view)
        update = None
        if use_input_stats:
            w2 = None if wd is None else reshape(wd, c1)
            y, mean, var = _kernel(be, "group_normalize")(
                x_, w2, None if bd is None else reshape(bd, c1), eps, True)
            if rm is not None:
                new_mean, new_var = _kernel(be, "running_update")(rm, rv, mean, var, momentum,
                                                                  correction)
                update = _update(new_mean, new_var)
        else:
            w2, mean, var = wd, rm, rv
            y = _kernel(be, "channel_normalize")(x_, rm, rv, eps, wd, bd)
        y = reshape(y, shape)
        saved = _saved(tmpl, x_, mean, var, w2, None if wd is None else cshape, bd is not None,
                       {"batch_stats": use_input_stats, "unbatched_shape": unbatched_shape},
                       update)
        if update is not None:
            buffers.update(running_mean=update.mean, running_var=update.var)
        m._local.saved = saved
        return y

    return run


# ---------------------------------------------------------------------- building
_BUILDERS: dict[str, Any] = {
    "layer_norm": lambda m, x: _rows(m, x, False), "rms_norm": lambda m, x: _rows(m, x, True),
    "group_norm": _group, "batch_norm": _batch, "instance_norm": _instance,
}
#: The methods a plan stands for: a subclass that overrides one of them gets no plan.
_METHODS = ("__call__", "forward", "_forward", "_check_input_dim", "_weight", "_bias")
_eligible: dict[type, Any] = {}


def _builder(cls: type) -> Any:
    found = _eligible.get(cls, MISS)
    if found is MISS:
        base = next((b for b in cls.__mro__ if "_fast_kind" in b.__dict__), None)
        kind = None if base is None else base.__dict__["_fast_kind"]
        same = base is not None and all(getattr(cls, n, None) is getattr(base, n, None)
                                        for n in _METHODS)
        found = _eligible[cls] = _BUILDERS.get(kind) if same else None
    return found


def build(m: Any, x: np.ndarray, plans: dict[Any, Plan]) -> None:
    """After a successful forward of ``x``: leave a plan for its (shape, dtype) in ``plans`` (the
    layer's ``_fast`` dict as it was before that forward), or a note that there is none."""
    key = (x.shape, x.dtype)
    if type(plans) is not dict or key in plans:
        return
    builder = _builder(type(m))
    plan = None
    if builder is not None and x.size and m.backend.is_native(x):
        plan = builder(m, x)
    if len(plans) >= MAX_PLANS:
        plans.clear()
    plans[key] = _miss if plan is None else plan
