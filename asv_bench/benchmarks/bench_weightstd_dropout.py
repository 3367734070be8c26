"""Weight standardization (functional, per output filter of a conv weight) and Dropout."""

from __future__ import annotations

from typing import Any

import normcore

from ._common import skip
from ._layers import _LayerBench, _MemoryBench, _ModuleBench, _State


def _functional() -> Any:
    F = getattr(normcore, "functional", None)
    if F is None or not hasattr(F, "weight_standardization"):
        skip("normcore at this commit has no functional.weight_standardization")
    return F


class _WeightStandardization:
    # A functional op, not a module: "layer_name" is the attribute checked for existence.
    layer_name = "functional"
    # 3x3 convs of a ResNet stage 4 and stage 2, and a 1x1 bottleneck expansion.
    full_shapes = [(512, 512, 3, 3), (128, 128, 3, 3), (2048, 512, 1, 1)]
    quick_shapes = [(64, 32, 3, 3)]

    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        _functional()
        return backend  # the functional op runs on the backend directly


class WeightStandardization(_WeightStandardization, _LayerBench):
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
    def step(self, backend: Any, x: Any, dy: Any) -> Any:
        F = normcore.functional
        _, saved = F.weight_standardization(x, backend=backend)
        return F.weight_standardization_backward(dy, saved)

    def peakmem_forward(self, backend: str, shape: tuple[int, ...], dtype: str) -> None:
        normcore.functional.weight_standardization(self.x, backend=self.module)


class _Dropout:
    layer_name = "Dropout"
    full_shapes = [(8192, 1024), (32, 64, 56, 56)]
    quick_shapes = [(256, 256)]

    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        return normcore.Dropout(0.1, seed=0, backend=backend, dtype=dtype)


class Dropout(_Dropout, _ModuleBench):
    pass


class DropoutMemory(_Dropout, _MemoryBench):
    pass
