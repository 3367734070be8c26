"""_blocks.parallel_blocks: every block runs once, on the calling thread or numba's threads, and
what the blocks read stays alive until they are done."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")
from numba import njit  # noqa: E402

from normcore_numba import _blocks  # noqa: E402
from normcore_numba._blocks import parallel_blocks  # noqa: E402
from normcore_numba._common import empty  # noqa: E402


@njit(inline="always")
def _sum_body(b, a):
    x, out, nblk = a
    n = x.shape[0]
    s = 0.0
    for i in range(b * n // nblk, (b + 1) * n // nblk):
        s += x[i]
    out[b] = 1000.0 * (b + 1) + s


@njit
def _block_sums(x, nblk):
    out = empty(nblk, np.float64)
    for j in range(nblk):
        out[j] = -1.0
    parallel_blocks(_sum_body, nblk, (x, out, nblk))
    return out


@pytest.mark.parametrize("nblk", [1, 2, 7, 64])
def test_every_block_runs_once_with_its_own_range(nblk):
    x = np.arange(1000, dtype=np.float64)
    want = np.array([1000.0 * (b + 1) + x[b * 1000 // nblk:(b + 1) * 1000 // nblk].sum()
                     for b in range(nblk)])
    np.testing.assert_array_equal(_block_sums(x, nblk), want)


@njit(inline="always")
def _read_after_reuse_body(b, a):
    rows, out = a
    # allocate and scribble over a buffer of the rows' size first: had the rows been freed,
    # this is the memory the allocator hands out again
    junk = empty(rows.shape[0], np.float64)
    for i in range(junk.shape[0]):
        junk[i] = -7.0
    s = 0.0
    for i in range(rows.shape[0]):
        s += rows[i] + junk[i] * 0.0
    out[b] = s


@njit
def _temporary_rows(n, nblk):
    rows = empty(n, np.float64)  # made here, used by the blocks only: its last use is the tuple
    for i in range(n):
        rows[i] = i + 1.0
    out = empty(nblk, np.float64)
    parallel_blocks(_read_after_reuse_body, nblk, (rows, out))
    return out


@pytest.mark.parametrize("nblk", [1, 3])
@pytest.mark.parametrize("n", [16, 1000, 100_000])
def test_arrays_made_for_the_blocks_live_until_they_are_done(n, nblk):
    np.testing.assert_array_equal(_temporary_rows(n, nblk), np.full(nblk, n * (n + 1) / 2))


def test_block_entries_are_named_for_their_body_and_argument_types():
    """Entry names are what tells cached subroutines apart (see _blocks._entry_impl): distinct
    for each body and tuple type, and the same for the same pair."""
    f64 = numba.types.Array(numba.float64, 1, "C")
    f32 = numba.types.Array(numba.float32, 1, "C")
    t1 = numba.types.Tuple((f64, f64, numba.int64))
    t2 = numba.types.Tuple((f32, f64, numba.int64))
    names = {
        _blocks._entry_impl(_sum_body, t1).__qualname__,
        _blocks._entry_impl(_sum_body, t2).__qualname__,
        _blocks._entry_impl(_read_after_reuse_body, t1).__qualname__,
    }
    assert len(names) == 3
    assert _blocks._entry_impl(_sum_body, t1) is _blocks._entry_impl(_sum_body, t1)
    assert all(name.startswith(("_sum_body_entry_", "_read_after_reuse_body_entry_"))
               for name in names)
