"""GroupNorm(32, C) and InstanceNorm2d over (N, C, H, W) feature maps. Shapes and constructor
arguments: the rows of normcore/layers.py whose asv_file is this file."""

from __future__ import annotations

from ._table import layer_classes

globals().update(layer_classes("bench_groupnorm", __name__))
