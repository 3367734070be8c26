"""normcore's Numba CPU backend: plain ``@njit`` kernels with one ``prange`` loop over blocks of
work, statistics summed in float64 for every dtype (docs/backends.md).

Importing this package is light (it does not import numba); the backend class lives in
``normcore_numba.backend``, the compiled kernels in ``_channel``, ``_group`` and ``_rows`` (one
module per view), how they compile in ``_jit`` and every tunable in ``_plan``. Kernel modules are
imported on the first kernel call and each kernel compiles on first use (cached on disk).
"""

#: Metadata read by normcore's registry without importing the backend module.
INFO = {
    "device": "cpu",
    "array_library": "numpy",
    "requires": ["numba"],
    "priority": 20,
    "description": "Numba parallel CPU kernels (prange, float64 sums; on-disk cache)",
}


def empty_cache() -> int:
    """Return the numba backend's idle output buffers to the allocator; the bytes released.

    >>> import normcore_numba
    >>> normcore_numba.empty_cache() >= 0
    True
    """
    from ._pool import empty_cache as release

    return release()
