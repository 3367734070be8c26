"""LayerNorm and RMSNorm over the last dimension of (tokens, features) activations. Shapes and
constructor arguments: the rows of normcore/layers.py whose asv_file is this file."""

from __future__ import annotations

from ._table import layer_classes

globals().update(layer_classes("bench_layernorm", __name__))
