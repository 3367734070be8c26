"""The layer table: one row per layer, read by ``normcore bench``, the asv suite, the golden-vector
generator and the parametrized tests. A new layer is its functional op, its module and a row here.

Each row names the normcore attribute and its ``torch.nn`` counterpart, says how to build it for an
input shape (torch's keyword arguments, so the same call builds both), and lists its shapes:

* ``bench`` / ``bench_quick``: ``normcore bench``'s default grid and ``--quick`` grid; ``variants``
  adds ``<key>-nhwc`` (channels-last strides) and ``<key>-eval`` (evaluation forward only) on the
  first shape of each;
* ``gpu``: ``normcore bench --gpu``'s grid (sizes that fill a GPU);
* ``asv`` / ``asv_quick``: the asv suite's realistic and quick shapes, in the benchmark file
  ``asv_file`` (asv keys its history by file, class and parameters: keep them as they are);
* ``golden``: the configurations ``make_golden.py`` records from torch (order matters: the random
  inputs are drawn case after case);
* ``test``: one small configuration for the parametrized tests (with parameters, and running
  statistics where the layer has them).

Only the standard library is imported here (no NumPy, no torch).

>>> [row.name for row in LAYERS][:3]
['BatchNorm1d', 'BatchNorm2d', 'BatchNorm3d']
>>> by_name("GroupNorm").kwargs((16, 256, 32, 32))
{'num_groups': 32, 'num_channels': 256}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["Config", "Layer", "LAYERS", "by_name", "golden_cases", "modules"]

Shape = tuple[int, ...]


class Config(NamedTuple):
    """Constructor keyword arguments (torch's names) and an input shape."""

    kwargs: dict[str, Any]
    shape: Shape


@dataclass(frozen=True)
class Layer:
    """One row of the table (see the module docstring)."""

    name: str  # normcore attribute: a module class, or a functional op's golden name
    torch: str | None  # torch.nn class name; None where torch has no module
    kwargs: Callable[[Shape], dict[str, Any]]  # realistic constructor kwargs for an input shape
    functional: str | None = None  # set for an op that is not a module: its normcore.functional name
    extra: dict[str, Any] = field(default_factory=dict)  # normcore-only kwargs (Dropout's seed)
    label: str = ""  # display name in bench tables (default: name)
    bench: tuple[Shape, ...] = ()
    bench_quick: tuple[Shape, ...] = ()
    variants: tuple[str, ...] = ()  # bench variants: "nhwc", "eval"
    gpu: tuple[Shape, ...] = ()
    asv: tuple[Shape, ...] = ()
    asv_quick: tuple[Shape, ...] = ()
    asv_file: str = "bench_layers"  # asv_bench/benchmarks/<asv_file>.py
    asv_kwargs: dict[str, Any] = field(default_factory=dict)  # on top of kwargs, asv only
    asv_memory: bool = True  # an asv <Name>Memory class (peak memory) too
    golden: tuple[Config, ...] = ()
    test: Config | None = None

    @property
    def key(self) -> str:
        """The bench key (``--layer``): the lower-case name."""
        return self.name.lower()

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def is_module(self) -> bool:
        return self.functional is None


def _features(shape: Shape) -> dict[str, Any]:
    return {"num_features": shape[1]}


def _last(shape: Shape) -> dict[str, Any]:
    return {"normalized_shape": shape[-1]}


def _bn_golden(*shapes: Shape) -> tuple[Config, ...]:
    out = []
    for shape in shapes:
        c = shape[1]
        for kw in ({}, {"momentum": None}, {"affine": False, "momentum": 0.3},
                   {"track_running_stats": False},
                   {"affine": False, "track_running_stats": False, "eps": 1e-3}):
            out.append(Config({"num_features": c, **kw}, shape))
    return tuple(out)


def _in_golden(dims: int, *shapes: Shape) -> tuple[Config, ...]:
    out = []
    for shape in shapes:
        c = shape[-1 - dims]
        for kw in ({}, {"affine": True}, {"affine": True, "track_running_stats": True},
                   {"track_running_stats": True, "momentum": None}):
            out.append(Config({"num_features": c, **kw}, shape))
    return tuple(out)


_TRACKED = {"affine": True, "track_running_stats": True}

LAYERS: tuple[Layer, ...] = (
    Layer("BatchNorm1d", "BatchNorm1d", _features,
          # (N, C) input, as after a linear layer: per-channel statistics over rows of C channels
          bench=((4096, 512),), bench_quick=((256, 64),),
          asv=((4096, 512), (65536, 16)), asv_quick=((256, 64),), asv_file="bench_batchnorm",
          asv_memory=False,
          golden=_bn_golden((6, 3), (4, 3, 5)), test=Config({"num_features": 4}, (6, 4, 3))),
    Layer("BatchNorm2d", "BatchNorm2d", _features,
          # ResNet-50 stage 1 at batch 32, a deeper stage at batch 8, a large batch of small maps
          bench=((32, 64, 56, 56), (8, 256, 28, 28), (256, 64, 8, 8)),
          bench_quick=((8, 16, 16, 16),), variants=("nhwc", "eval"), gpu=((32, 64, 56, 56),),
          asv=((32, 64, 56, 56), (8, 256, 28, 28), (256, 64, 8, 8)),
          asv_quick=((4, 16, 16, 16),), asv_file="bench_batchnorm",
          golden=_bn_golden((3, 4, 3, 5)), test=Config({"num_features": 4}, (3, 4, 5, 5))),
    Layer("BatchNorm3d", "BatchNorm3d", _features,
          golden=_bn_golden((2, 3, 2, 3, 2)), test=Config({"num_features": 2}, (2, 2, 3, 3, 3))),
    Layer("InstanceNorm1d", "InstanceNorm1d", _features,
          golden=_in_golden(1, (3, 4, 7), (4, 7)),
          test=Config({"num_features": 4, **_TRACKED}, (3, 4, 7))),
    Layer("InstanceNorm2d", "InstanceNorm2d", _features,
          bench=((16, 64, 64, 64),), bench_quick=((4, 16, 16, 16),),
          # style-transfer resolution and many small instances; affine and running statistics
          # on in asv, so that its evaluation mode differs from training mode
          asv=((4, 64, 256, 256), (32, 256, 16, 16)), asv_quick=((4, 16, 16, 16),),
          asv_file="bench_groupnorm", asv_kwargs=_TRACKED,
          golden=_in_golden(2, (2, 3, 4, 5), (3, 4, 5)),
          test=Config({"num_features": 4, **_TRACKED}, (3, 4, 5, 5))),
    Layer("InstanceNorm3d", "InstanceNorm3d", _features,
          golden=_in_golden(3, (2, 3, 2, 3, 4)),
          test=Config({"num_features": 2, **_TRACKED}, (2, 2, 3, 3, 3))),
    Layer("LayerNorm", "LayerNorm", _last,
          # BERT-large-ish (8192 tokens x 1024), ViT-B/16 at batch 64 (12544 x 768), 4096 wide
          bench=((8192, 1024), (12544, 768), (4096, 4096)), bench_quick=((256, 256),),
          gpu=((4096, 4096), (8192, 1024), (16384, 8192)),
          asv=((8192, 1024), (12544, 768), (4096, 4096)), asv_quick=((256, 256),),
          asv_file="bench_layernorm",
          golden=(Config({"normalized_shape": [8]}, (5, 8)),
                  Config({"normalized_shape": [4, 5]}, (2, 3, 4, 5)),
                  Config({"normalized_shape": [7], "elementwise_affine": False}, (3, 7)),
                  Config({"normalized_shape": [6], "bias": False, "eps": 1e-3}, (3, 2, 6))),
          test=Config({"normalized_shape": [5, 5]}, (3, 4, 5, 5))),
    Layer("GroupNorm", "GroupNorm", lambda s: {"num_groups": 32, "num_channels": s[1]},
          label="GroupNorm(32)",
          # 16 MB fits the test machine's last-level cache with its output, 64 MB does not: the
          # two show the layer against a copy from cache and from memory (docs/backends.md)
          bench=((16, 256, 32, 32), (64, 256, 32, 32)), bench_quick=((4, 64, 8, 8),),
          # a diffusion-UNet block and a deeper, narrower one
          asv=((16, 256, 32, 32), (8, 512, 16, 16)), asv_quick=((4, 64, 8, 8),),
          asv_file="bench_groupnorm",
          golden=(Config({"num_groups": 3, "num_channels": 6}, (3, 6, 5)),
                  Config({"num_groups": 2, "num_channels": 8, "affine": False}, (2, 8, 3, 3)),
                  Config({"num_groups": 4, "num_channels": 4, "eps": 1e-2}, (2, 4, 2, 2, 3)),
                  Config({"num_groups": 1, "num_channels": 6}, (4, 6))),
          test=Config({"num_groups": 2, "num_channels": 4}, (3, 4, 5, 5))),
    Layer("RMSNorm", "RMSNorm", _last,
          bench=((8192, 1024),), bench_quick=((256, 256),),
          gpu=((4096, 4096), (8192, 1024), (16384, 8192)),
          # LLaMA-7B-like hidden size at 2048 tokens, and a 1024-wide model at 8192 tokens
          asv=((2048, 4096), (8192, 1024)), asv_quick=((256, 256),), asv_file="bench_layernorm",
          golden=(Config({"normalized_shape": [8]}, (5, 8)),
                  Config({"normalized_shape": [4, 5], "eps": 1e-4}, (2, 3, 4, 5)),
                  Config({"normalized_shape": [6], "elementwise_affine": False}, (3, 6))),
          test=Config({"normalized_shape": [5]}, (3, 4, 5))),
    Layer("WeightStandardization", None, lambda s: {}, functional="weight_standardization",
          # 3x3 convs of a ResNet stage 4 and stage 2, and a 1x1 bottleneck expansion
          asv=((512, 512, 3, 3), (128, 128, 3, 3), (2048, 512, 1, 1)),
          asv_quick=((64, 32, 3, 3),), asv_file="bench_weightstd_dropout",
          golden=(Config({"eps": 1e-5}, (4, 3, 3, 3)),
                  Config({"eps": 1e-5, "unbiased": True, "eps_in_root": False}, (5, 2, 3)))),
    Layer("Dropout", "Dropout", lambda s: {"p": 0.1}, extra={"seed": 0},
          asv=((8192, 1024), (32, 64, 56, 56)), asv_quick=((256, 256),),
          asv_file="bench_weightstd_dropout"),
)


def by_name(name: str) -> Layer:
    """The row of a normcore name (``"LayerNorm"``)."""
    for row in LAYERS:
        if row.name == name:
            return row
    raise KeyError(f"no layer {name!r} in normcore.layers.LAYERS")


def modules() -> list[Layer]:
    """The rows of normalization modules with a small test configuration (the tests' list)."""
    return [row for row in LAYERS if row.is_module and row.test is not None]


def golden_cases() -> list[dict[str, Any]]:
    """The golden file's case list: every row's golden configurations, float64 then float32, in
    table order, as ``make_golden.py`` records them (ids, kwargs and order are part of the file)."""
    cases = []
    for row in LAYERS:
        for kwargs, shape in row.golden:
            tag = ",".join(f"{k}={v}" for k, v in kwargs.items())
            for dtype in ("float64", "float32"):
                cases.append({"id": f"{row.name}[{'x'.join(map(str, shape))}]({tag})-{dtype}",
                              "layer": row.name, "shape": list(shape), "kwargs": dict(kwargs),
                              "dtype": dtype, "steps": 3})
    return cases
