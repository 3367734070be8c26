"""The layer table (normcore/layers.py): every row names real classes, its shapes build, its golden
configurations are the stored golden file's case list, and it drives bench and the tests."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import normcore
from normcore import bench, layers
from normcore.testing.cases import GOLDEN

ROWS = list(layers.LAYERS)
IDS = [row.name for row in ROWS]


def test_the_table_imports_nothing_heavy():
    # normcore/__init__ imports numpy; load the file on its own, as the asv suite does
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('t', "
            f"{str(layers.__file__)!r}); m = importlib.util.module_from_spec(spec); "
            "sys.modules['t'] = m; spec.loader.exec_module(m); "
            "print(sorted({'numpy', 'torch', 'jax', 'numba'} & set(sys.modules)), len(m.LAYERS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", str(len(ROWS))]


def test_every_module_of_normcore_has_a_row():
    exported = {name for name in normcore.__all__ if isinstance(getattr(normcore, name), type)
                and issubclass(getattr(normcore, name), normcore.Module)}
    exported -= {"Module", "SyncBatchNorm"}  # the base class; BatchNorm across processes
    assert exported <= {row.name for row in ROWS}
    assert len(set(IDS)) == len(IDS)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_row_names_exist(row):
    if row.is_module:
        assert isinstance(getattr(normcore, row.name), type)
    else:
        assert callable(getattr(normcore.functional, row.functional))
        assert callable(getattr(normcore.functional, f"{row.functional}_backward"))
    if row.torch is not None:
        torch = pytest.importorskip("torch")
        assert isinstance(getattr(torch.nn, row.torch), type)


@pytest.mark.parametrize("row", [r for r in ROWS if r.is_module], ids=lambda r: r.name)
def test_every_shape_builds_the_layer_and_its_torch_twin(row):
    torch = pytest.importorskip("torch") if row.torch else None
    shapes = {*row.bench, *row.bench_quick, *row.gpu, *row.asv, *row.asv_quick}
    for shape in shapes:
        kwargs = row.kwargs(shape)
        ours = getattr(normcore, row.name)(**kwargs, **row.asv_kwargs, **row.extra,
                                           backend="numpy")
        if torch is not None:
            theirs = getattr(torch.nn, row.torch)(**kwargs, **row.asv_kwargs)
            assert set(ours.state_dict()) == set(theirs.state_dict()), shape
    for shape in {*row.bench_quick, *row.asv_quick}:  # small: run them
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        layer = getattr(normcore, row.name)(**row.kwargs(shape), **row.extra, backend="numpy")
        assert layer(x).shape == shape
        assert layer.backward(x).shape == shape


def test_golden_configurations_are_the_stored_case_list():
    with np.load(GOLDEN) as data:
        text = str(data["cases"])
    stored = json.loads(text)
    assert layers.golden_cases() == stored
    assert json.dumps(layers.golden_cases()) == text  # ids and key order too
    names = {c["layer"] for c in stored}
    assert names == {row.name for row in ROWS if row.golden}


def test_test_configurations_have_parameters_and_run():
    for row in layers.modules():
        layer = getattr(normcore, row.name)(**row.test.kwargs, backend="numpy")
        assert "weight" in layer.state_dict(), row.name
        x = np.random.default_rng(1).standard_normal(row.test.shape).astype(np.float32)
        assert layer(x).shape == row.test.shape


def test_bench_reads_the_table():
    keys = {row.key for row in ROWS if row.bench}
    variants = {f"{row.key}-{v}" for row in ROWS for v in row.variants}
    assert set(bench.LAYERS) == keys | variants
    for case in bench.default_cases(quick=True):
        want = case.row.bench_quick[:1] if case.variant else case.row.bench_quick
        assert case.shape in want
    assert bench.LAYERS["groupnorm"] == "GroupNorm(32)"
    assert bench.normalize_layer("GroupNorm(32)") == "groupnorm"
    assert bench.normalize_layer("BatchNorm2d (eval)") == "batchnorm2d-eval"


def test_by_name():
    assert layers.by_name("LayerNorm").torch == "LayerNorm"
    with pytest.raises(KeyError, match="no layer 'ConvNorm'"):
        layers.by_name("ConvNorm")
