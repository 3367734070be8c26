"""GroupNorm(32, C) and InstanceNorm2d over (N, C, H, W) feature maps."""

from __future__ import annotations

from typing import Any

import normcore

from ._layers import _MemoryBench, _ModuleBench

GROUPS = 32


class _GroupNorm:
    layer_name = "GroupNorm"
    # A diffusion-UNet block (16 x 256 x 32 x 32) and a deeper, narrower one.
    full_shapes = [(16, 256, 32, 32), (8, 512, 16, 16)]
    quick_shapes = [(4, 64, 8, 8)]

    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        return normcore.GroupNorm(GROUPS, shape[1], backend=backend, dtype=dtype)


class GroupNorm(_GroupNorm, _ModuleBench):
    pass


class GroupNormMemory(_GroupNorm, _MemoryBench):
    pass


class _InstanceNorm2d:
    layer_name = "InstanceNorm2d"
    # Style-transfer resolution (4 x 64 x 256 x 256) and many small instances.
    full_shapes = [(4, 64, 256, 256), (32, 256, 16, 16)]
    quick_shapes = [(4, 16, 16, 16)]

    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        # affine and running statistics on, so evaluation mode differs from training mode.
        return normcore.InstanceNorm2d(shape[1], affine=True, track_running_stats=True,
                                       backend=backend, dtype=dtype)


class InstanceNorm2d(_InstanceNorm2d, _ModuleBench):
    pass


class InstanceNorm2dMemory(_InstanceNorm2d, _MemoryBench):
    pass
