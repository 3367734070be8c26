"""Every other layer of normcore/layers.py with asv shapes (a row's default ``asv_file``): a new
layer is benchmarked here, forward, backward, evaluation forward and peak memory, once its row
lists ``asv`` shapes."""

from __future__ import annotations

from ._table import layer_classes

globals().update(layer_classes("bench_layers", __name__))
