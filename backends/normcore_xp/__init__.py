"""normcore's ``array-api`` backends: every kernel written once against the Python Array API
standard (through ``array-api-compat``), run on NumPy, array-api-strict, PyTorch, JAX or CuPy.

Importing this package imports no array library (not even array-api-compat): the registry reads
the ``INFO_*`` dicts below to list the backends, and the library is imported on first use. The
backend class lives in ``normcore_xp.backend``.
"""

_DESCRIPTION = "Array API standard kernels (array-api-compat) on {}"

#: Metadata read by normcore's registry without importing the backend module. Priority -10:
#: automatic selection never prefers these over numba or numpy; name them.
#: ``array_library`` and ``requires`` (modules found without importing) serve contract v2's
#: registry; a version-1 registry ignores them.
INFO_NUMPY = {"device": "cpu", "priority": -10, "array_library": "numpy",
              "requires": ["array_api_compat"], "description": _DESCRIPTION.format("NumPy")}
INFO_STRICT = {"device": "cpu", "priority": -10, "array_library": "array_api_strict",
               "requires": ["array_api_compat", "array_api_strict"],
               "description": _DESCRIPTION.format("array-api-strict (float32/float64)")}
INFO_TORCH = {"device": "cpu", "priority": -10, "array_library": "torch",
              "requires": ["array_api_compat", "torch"],
              "description": _DESCRIPTION.format("PyTorch tensors (CPU; CUDA/MPS tensors too)")}
INFO_JAX = {"device": "cpu", "priority": -10, "array_library": "jax",
            "requires": ["array_api_compat", "jax", "jaxlib"],
            "description": _DESCRIPTION.format("JAX arrays")}
INFO_CUPY = {"device": "gpu", "priority": -10, "array_library": "cupy",
             "requires": ["array_api_compat", "cupy"],
             "description": _DESCRIPTION.format("CuPy arrays")}
