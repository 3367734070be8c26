"""Non-finite input: NaN and inf spread the way torch spreads them, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import normcore

# the NumPy reference warns about the invalid values it computes, as NumPy does
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _layers(backend):
    return {
        "RMSNorm": normcore.RMSNorm(5, backend=backend),
        "LayerNorm": normcore.LayerNorm(5, backend=backend),
        "GroupNorm": normcore.GroupNorm(2, 4, backend=backend),
        "BatchNorm1d": normcore.BatchNorm1d(4, backend=backend),
    }


def _input(name, bad):
    x = np.random.default_rng(3).normal(size=(6, 4, 5)).astype(np.float32)
    if name in ("RMSNorm", "LayerNorm"):
        x = x.reshape(24, 5)
    x.reshape(-1)[7] = bad
    return x


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("name", ["RMSNorm", "LayerNorm", "GroupNorm", "BatchNorm1d"])
def test_non_finite_input_spreads_as_in_the_reference(backend, name, bad):
    x = _input(name, bad)
    got = normcore.to_numpy(_layers(backend)[name](x))
    want = normcore.to_numpy(_layers("numpy")[name](x))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_rms_norm_of_a_row_with_an_infinity_is_zeros_and_one_nan(backend, bad):
    """torch.nn.RMSNorm: the row's rms is inf, so x / rms is 0 for the finite entries and
    inf / inf = NaN for the infinite one (a float32 shortcut once made the whole row NaN)."""
    x = _input("RMSNorm", bad)
    y = normcore.to_numpy(_layers(backend)["RMSNorm"](x))
    row = y[1]  # element 7 of the flat input is row 1, column 2
    assert np.isnan(row[2]) and np.all(np.delete(row, 2) == 0)
    assert np.isfinite(np.delete(y, 1, axis=0)).all()
