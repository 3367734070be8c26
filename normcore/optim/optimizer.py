"""The optimizer base: parameter groups, per-parameter state, ``zero_grad``, ``state_dict`` and
``load_state_dict`` exactly as :class:`torch.optim.Optimizer` (torch 2.13) lays them out, over
normcore :class:`~normcore.Parameter` objects whose arrays live on any backend."""

from __future__ import annotations

import numbers
import warnings
from collections import defaultdict
from collections.abc import Callable
from copy import deepcopy
from itertools import chain
from typing import Any

import numpy as np

from .._parameter import Parameter

Array = Any

__all__ = ["Optimizer"]


# ---------------------------------------------------------------------- array helpers
def namespace(arr: Array) -> Any:
    """The array library of ``arr``: NumPy for NumPy arrays, else array-api-compat's namespace
    (CuPy, torch, JAX, ...), so that ``sqrt`` and ``maximum`` run where the array lives."""
    if isinstance(arr, np.ndarray | np.generic):
        return np
    import array_api_compat

    return array_api_compat.array_namespace(arr)


def _writable_in_place(arr: Array) -> bool:
    """Whether ``arr[...] = value`` may be used: writable NumPy arrays, CuPy arrays and torch
    tensors that autograd does not track (other libraries' arrays, e.g. JAX's immutable ones, are
    replaced by the new array instead)."""
    if isinstance(arr, np.ndarray):
        return bool(arr.flags.writeable)
    lib = type(arr).__module__.split(".")[0]
    return lib == "cupy" or (lib == "torch" and not getattr(arr, "requires_grad", True))


def assign(owner: Any, key: str, value: Array) -> None:
    """Store ``value`` as ``owner.key`` (or ``owner[key]`` for a dict): in place into the existing
    array when it can be written (views of it see the update, as torch's in-place ``add_`` would),
    else by rebinding."""
    is_dict = isinstance(owner, dict)
    old = owner.get(key) if is_dict else getattr(owner, key)
    if (old is not None and _writable_in_place(old) and type(old) is type(value)
            and tuple(old.shape) == tuple(value.shape) and old.dtype == value.dtype):
        old[...] = value
    elif is_dict:
        owner[key] = value
    else:
        setattr(owner, key, value)


def to_host(arr: Any) -> np.ndarray:
    """A NumPy copy of any array (NumPy, CuPy, torch, JAX, ...)."""
    from .. import to_numpy

    return np.array(to_numpy(arr), copy=True)


def like(value: Any, param: Array, *, cast: bool = True) -> Array:
    """``value`` (NumPy, torch CPU tensor, any array) as a fresh array of ``param``'s library and
    device, with ``param``'s dtype when ``cast`` (as torch's ``load_state_dict`` casts state to
    the parameter's dtype and device)."""
    host = to_host(value)
    if cast:
        host = host.astype(np.dtype(str(param.dtype).replace("torch.", "")), copy=False)
    if isinstance(param, np.ndarray):
        return host
    xp = namespace(param)
    import array_api_compat

    return xp.asarray(host, device=array_api_compat.device(param))


def check_real(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number (normcore.optim takes no tensor {what}), "
                        f"got {type(value).__name__}")


def check_default_only(cls: str, **flags: Any) -> None:
    """torch's implementation switches that normcore does not have: only their defaults
    (``None``/``False``) are accepted, and the single-tensor update is what runs."""
    for name, value in flags.items():
        if value:
            raise NotImplementedError(
                f"normcore.optim.{cls} supports only {name}=None/False (got {value!r}): it runs "
                "torch's single-tensor update rule on the backend's arrays; foreach, fused, "
                "capturable and differentiable implementations are not provided")


# ---------------------------------------------------------------------- the base class
class Optimizer:
    """Base of the optimizers: ``param_groups`` (a list of dicts, each with ``"params"`` and its
    options), ``state`` (per Parameter), ``zero_grad``, ``step``, ``state_dict`` and
    ``load_state_dict`` with torch.optim's semantics, messages and layout.

    >>> import numpy as np, normcore
    >>> from normcore.optim import SGD
    >>> w = normcore.Parameter(np.array([1.0, 2.0]))
    >>> opt = SGD([w], lr=0.5)
    >>> w.grad = np.array([1.0, -1.0])
    >>> opt.step()
    >>> w.data.tolist()
    [0.5, 2.5]
    """

    #: group keys that must keep their defaults on this implementation (checked at each step)
    _default_only: tuple[str, ...] = ()

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        if isinstance(params, Parameter):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            "Parameters or dicts, but got normcore.Parameter")
        self.state: defaultdict[Parameter, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for param_group in param_groups:
            self.add_param_group(param_group)

    def __repr__(self) -> str:
        out = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            out += f"\nParameter Group {i}\n"
            for key in sorted(group):
                if key != "params":
                    out += f"    {key}: {group[key]}\n"
        return out + ")"

    # -------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (a dict with ``"params"`` and any per-group options; the rest default to
        the optimizer's), as torch's ``add_param_group``. Parameters may be given as
        ``(name, Parameter)`` pairs, which records the group's ``"param_names"``."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params = param_group["params"]
        if isinstance(params, Parameter):
            param_group["params"] = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the "
                "ordering of tensors in sets will change between runs. Please use a list instead.")
        else:
            param_group["params"] = list(params)

        tensors, names = [], []
        for param in param_group["params"]:
            if isinstance(param, tuple):
                names.append(param[0])
                tensors.append(param[1])
            else:
                tensors.append(param)
        param_group["params"] = tensors
        if names:
            if len(names) == len(tensors):
                param_group["param_names"] = names
            else:
                raise ValueError("all optimizer params should be with/without names. Some param "
                                 "names are missing")
        for param in tensors:
            if not isinstance(param, Parameter):
                raise TypeError("optimizer can only optimize Parameters, but one of the params is "
                                f"{type(param).__module__}.{type(param).__qualname__}")
        for name, default in self.defaults.items():
            param_group.setdefault(name, default)
        self._check_group(param_group)

        if len(tensors) != len({id(p) for p in tensors}):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in "
                          "future, this will cause an error; see github.com/pytorch/pytorch/issues/"
                          "40967 for more information", stacklevel=3)
        seen: set[int] = set()
        for group in self.param_groups:
            seen.update(id(p) for p in group["params"])
            if ("param_names" in param_group) != ("param_names" in group):
                txt = "with names" if "param_names" in param_group else "without names"
                raise ValueError("all optimizer param groups should be with/without names. "
                                 f"cannot add param group {txt} to the optimizer")
        if not seen.isdisjoint(id(p) for p in tensors):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(param_group)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_default_only(type(self).__name__, **{k: group.get(k) for k in self._default_only})
        check_real(group["lr"], "lr")

    # -------------------------------------------------------------- gradients and steps
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of every optimized Parameter: to None (the default, as torch's),
        else to zeros in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                elif _writable_in_place(p.grad):
                    p.grad[...] = 0
                else:
                    p.grad = namespace(p.grad).zeros_like(p.grad)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every Parameter whose ``grad`` is not None (the others are skipped, as
        torch skips them). ``closure``, if given, is called first and its value returned."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            self._check_group(group)
            self._update_group(group, [p for p in group["params"] if p.grad is not None])
        return loss

    def _update_group(self, group: dict[str, Any], params: list[Parameter]) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------- state_dict
    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{options..., "params": [indices]}]}``,
        torch.optim's layout: parameters are numbered in group order, and the state's arrays are
        NumPy copies (Adam's ``"step"`` a 0-d float32 array, as torch's float32 scalar tensor).

        It loads into torch.optim once the arrays are tensors, e.g.
        ``sd["state"] = {i: {k: torch.as_tensor(v) for k, v in s.items()} for i, s in
        sd["state"].items()}``.
        """
        mapping: dict[int, int] = {}
        start = 0

        def pack(group: dict[str, Any]) -> dict[str, Any]:
            nonlocal start
            packed = {k: v for k, v in group.items() if k != "params"}
            mapping.update({id(p): i for i, p in enumerate(group["params"], start)
                            if id(p) not in mapping})
            packed["params"] = [mapping[id(p)] for p in group["params"]]
            start += len(packed["params"])
            return packed

        groups = [pack(g) for g in self.param_groups]
        state = {mapping[id(p)]: {k: (to_host(v) if hasattr(v, "shape") else v)
                                  for k, v in s.items()}
                 for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by :meth:`state_dict` or by torch.optim for the same
        parameters in the same groups (tensors are read through ``numpy``), so that the next
        steps continue identically. Arrays are copied onto each Parameter's library and device,
        in its dtype (``"step"`` keeps its own)."""
        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups, strict=True)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the "
                             "size of optimizer's group")
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in groups), strict=True))
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for k, v in state_dict["state"].items():
            if k in id_map:
                param = id_map[k]
                state[param] = {key: self._load_value(param, key, val) for key, val in v.items()}
            else:
                state[k] = v
        new_groups = []
        for group, new in zip(groups, saved_groups, strict=True):
            new["params"] = group["params"]
            if "param_names" in group and "param_names" not in new:
                new["param_names"] = group["param_names"]
            new_groups.append(new)
        self.state, self.param_groups = state, new_groups
        self._after_load()

    def _load_value(self, param: Parameter, key: str, value: Any) -> Any:
        if value is None or isinstance(value, numbers.Number):
            return value
        return like(value, param.data)

    def _after_load(self) -> None:
        for group in self.param_groups:
            for name, default in self.defaults.items():
                group.setdefault(name, default)

    def __getstate__(self) -> dict[str, Any]:
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
