"""normcore's NumPy reference backend: clear code, float64 accumulation, the oracle for all others.

Importing this package is light; the backend class lives in ``normcore_numpy.backend``.
"""

#: Metadata read by normcore's registry without importing the backend module.
INFO = {
    "device": "cpu",
    "array_library": "numpy",
    "priority": 10,
    "description": "NumPy reference (float64 accumulation)",
}
