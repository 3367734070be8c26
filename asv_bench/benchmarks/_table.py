"""The layer table (``normcore/layers.py``) as asv benchmark classes.

The table is loaded from this working tree's file, not from the installed normcore: history runs
benchmark old commits with the current suite, and a commit older than the table must still see
the same grid (its cases are skipped where a layer is missing, see ``_common``). The table only
imports the standard library, so it loads on its own.

``layer_classes("bench_layernorm", __name__)`` returns, for each row whose ``asv_file`` is that
file, a mixin ``_<Name>`` (layer_name, shapes, build), the benchmark class ``<Name>`` and, unless
the row says otherwise, ``<Name>Memory``. A benchmark file puts them in its namespace; asv names
benchmarks by file, class and method, so a row keeps its history as long as its ``asv_file`` and
name stay.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from typing import Any

from ._common import layer_class
from ._layers import _MemoryBench, _ModuleBench

_PATH = pathlib.Path(__file__).resolve().parents[2] / "normcore" / "layers.py"


def _load() -> Any:
    name = "_normcore_layer_table"
    if name in sys.modules:
        return sys.modules[name]
    if _PATH.is_file():
        spec = importlib.util.spec_from_file_location(name, _PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while building
        spec.loader.exec_module(module)
        return module
    from normcore import layers  # an installed copy without the source tree

    return layers


#: The normcore.layers module of this working tree.
TABLE = _load()


def row(name: str) -> Any:
    """The table's row of a layer."""
    return TABLE.by_name(name)


def _builder(r: Any) -> Any:
    def build(self: Any, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        kwargs = {**r.kwargs(tuple(shape)), **r.asv_kwargs, **r.extra}
        return layer_class(r.name)(**kwargs, backend=backend, dtype=dtype)

    return build


def layer_classes(asv_file: str, module: str) -> dict[str, type]:
    """The mixins and benchmark classes of the rows benchmarked in ``asv_file`` (functional
    rows get their mixin only: their benchmark classes are written out in their file)."""
    out: dict[str, type] = {}
    for r in TABLE.LAYERS:
        if r.asv_file != asv_file or not r.asv:
            continue
        ns = {"layer_name": r.name if r.is_module else "functional",
              "full_shapes": [tuple(s) for s in r.asv],
              "quick_shapes": [tuple(s) for s in r.asv_quick], "__module__": module,
              "__doc__": f"{r.name} (a row of normcore/layers.py)"}
        if r.is_module:
            ns["build"] = _builder(r)
        mixin = type(f"_{r.name}", (), ns)
        out[mixin.__name__] = mixin
        if not r.is_module:
            continue
        doc = {"__module__": module, "__doc__": ns["__doc__"]}
        out[r.name] = type(r.name, (mixin, _ModuleBench), dict(doc))
        if r.asv_memory:
            out[f"{r.name}Memory"] = type(f"{r.name}Memory", (mixin, _MemoryBench), dict(doc))
    return out

