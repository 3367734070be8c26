"""Weight standardization (functional, per output filter of a conv weight) and Dropout. Shapes and
constructor arguments: the rows of normcore/layers.py whose asv_file is this file."""

from __future__ import annotations

from typing import Any

import normcore

from ._common import skip
from ._layers import _LayerBench, _MemoryBench, _State
from ._table import layer_classes

globals().update(layer_classes("bench_weightstd_dropout", __name__))
_WeightStandardization: Any = globals()["_WeightStandardization"]


def _functional() -> Any:
    F = getattr(normcore, "functional", None)
    if F is None or not hasattr(F, "weight_standardization"):
        skip("normcore at this commit has no functional.weight_standardization")
    return F


class WeightStandardization(_WeightStandardization, _LayerBench):
    """The functional op (``layer_name`` "functional": the attribute checked for existence); the
    "layer" ``build`` returns is the backend itself."""

    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        _functional()
        return backend  # the functional op runs on the backend directly

    def forward(self, st: _State) -> Any:
        _, saved = normcore.functional.weight_standardization(st.x, backend=st.layer)
        return saved

    def backward(self, st: _State) -> Any:
        return normcore.functional.weight_standardization_backward(st.dy, st.saved)

    def run_backward(self) -> Any:
        return normcore.functional.weight_standardization_backward(self.st.dy, self.st.saved)

    def _arm(self) -> None:
        pass  # the functional backward does not consume its saved state


class WeightStandardizationMemory(_WeightStandardization, _MemoryBench):
    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        _functional()
        return backend

    def step(self, backend: Any, x: Any, dy: Any) -> Any:
        F = normcore.functional
        _, saved = F.weight_standardization(x, backend=backend)
        return F.weight_standardization_backward(dy, saved)

    def peakmem_forward(self, backend: str, shape: tuple[int, ...], dtype: str) -> None:
        normcore.functional.weight_standardization(self.x, backend=self.module)
