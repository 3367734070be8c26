"""BatchNorm2d and BatchNorm1d: training forward (batch statistics + running-statistics update), backward,
evaluation forward (running statistics), bandwidth and peak memory. Shapes and constructor
arguments: the rows of normcore/layers.py whose asv_file is this file."""

from __future__ import annotations

from typing import Any

from ._common import skip
from ._layers import _ModuleBench
from ._table import layer_classes

globals().update(layer_classes("bench_batchnorm", __name__))
_BatchNorm2d: Any = globals()["_BatchNorm2d"]


class BatchNorm2dChannelsLast(_BatchNorm2d, _ModuleBench):
    """NCHW shapes with NHWC strides (channels_last memory format): its own kernels, no copy."""

    def layout(self, a: Any) -> Any:
        if hasattr(a, "permute"):  # torch tensors (array-api-torch): torch's channels_last
            return a.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        if not callable(getattr(a, "copy", None)):  # the Array API has no strides to choose
            skip("channels-last strides need NumPy, CuPy, JAX or torch arrays")
        return a.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
