"""Light metadata for normcore's registry: imported by ``normcore info`` and automatic selection
without importing the backend (keep this module free of heavy imports)."""

INFO = {
    "device": "cpu",
    "array_library": "numpy",
    "requires": ["numpy"],
    # Low priority: never chosen automatically over the built-in backends (numpy is 10, numba 20).
    "priority": 1,
    "description": "Example third-party backend: plain NumPy, einsum reductions",
}
