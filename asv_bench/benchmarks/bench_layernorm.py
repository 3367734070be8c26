"""LayerNorm and RMSNorm over the last dimension of (tokens, features) activations."""

from __future__ import annotations

from typing import Any

import normcore

from ._layers import _MemoryBench, _ModuleBench

# BERT-large-ish (8192 tokens x 1024), ViT-B/16 at batch 64 (12544 x 768), a 4096-wide model.
FULL = [(8192, 1024), (12544, 768), (4096, 4096)]
QUICK = [(256, 256)]


class _LayerNorm:
    layer_name = "LayerNorm"
    full_shapes = FULL
    quick_shapes = QUICK

    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        return normcore.LayerNorm(shape[-1], backend=backend, dtype=dtype)


class LayerNorm(_LayerNorm, _ModuleBench):
    pass


class LayerNormMemory(_LayerNorm, _MemoryBench):
    pass


class _RMSNorm:
    layer_name = "RMSNorm"
    # LLaMA-7B-like hidden size at 2048 tokens, and a 1024-wide model at 8192 tokens.
    full_shapes = [(2048, 4096), (8192, 1024)]
    quick_shapes = QUICK

    def build(self, backend: Any, shape: tuple[int, ...], dtype: str) -> Any:
        return normcore.RMSNorm(shape[-1], backend=backend, dtype=dtype)


class RMSNorm(_RMSNorm, _ModuleBench):
    pass


class RMSNormMemory(_RMSNorm, _MemoryBench):
    pass
