"""BatchNorm2d and BatchNorm1d: training forward (batch statistics + running-statistics update), backward,
evaluation forward (running statistics), bandwidth and peak memory."""

from __future__ import annotations

from typing import Any

import normcore

from ._layers import _MemoryBench, _ModuleBench

# ResNet-50 stage 1 at batch 32, a deeper stage at batch 8, and a large batch of small maps.
FULL = [(32, 64, 56, 56), (8, 256, 28, 28), (256, 64, 8, 8)]
QUICK = [(4, 16, 16, 16)]


class _BatchNorm2d:
    layer_name = "BatchNorm2d"
    full_shapes = FULL
    quick_shapes = QUICK

    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        return normcore.BatchNorm2d(shape[1], backend=backend, dtype=dtype)


class BatchNorm2d(_BatchNorm2d, _ModuleBench):
    pass


class BatchNorm2dMemory(_BatchNorm2d, _MemoryBench):
    pass


class BatchNorm2dChannelsLast(_BatchNorm2d, _ModuleBench):
    """NCHW shapes with NHWC strides (channels_last memory format): its own kernels, no copy."""

    def layout(self, a: Any) -> Any:
        return a.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)



class _BatchNorm1d:
    # (N, C) input, as after a linear layer: per-channel statistics over rows of C channels
    layer_name = "BatchNorm1d"
    full_shapes = [(4096, 512), (65536, 16)]
    quick_shapes = [(256, 64)]

    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        return normcore.BatchNorm1d(shape[1], backend=backend, dtype=dtype)


class BatchNorm1d(_BatchNorm1d, _ModuleBench):
    pass
