"""normcore's Numba CPU backend: parallel (prange) kernels; float64 input is summed in float64,
float32 input in float32 lanes of 32 terms that are added into float64 (docs/backends.md).

Importing this package is light (it does not import numba); the backend class lives in
``normcore_numba.backend`` and the compiled kernels in the private ``_*.py`` modules, which are
imported on the first kernel call and compiled per kernel on first use (cached on disk).
"""

#: Metadata read by normcore's registry without importing the backend module.
INFO = {
    "device": "cpu",
    "array_library": "numpy",
    "requires": ["numba"],
    "priority": 20,
    "description": "Numba parallel CPU kernels (prange, float32 sums in blocks of 32 terms, float64 beyond; "
                   "on-disk cache)",
}


def empty_cache() -> int:
    """Return the numba backend's idle output buffers to the allocator; the bytes released.

    >>> import normcore_numba
    >>> normcore_numba.empty_cache() >= 0
    True
    """
    from ._pool import empty_cache as release

    return release()
