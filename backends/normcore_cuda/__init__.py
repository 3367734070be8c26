"""normcore's GPU backend on Numba CUDA kernels (CuPy arrays in, CuPy arrays out).

Importing this package is light (no numba, no CuPy); the backend class lives in
``normcore_cuda.backend`` and the kernels in ``normcore_cuda._kernels``. Under
``NUMBA_ENABLE_CUDASIM=1`` the backend runs in Numba's CUDA simulator on host NumPy arrays.
"""

#: Metadata read by normcore's registry without importing the backend module.
INFO = {
    "device": "gpu",
    "array_library": "cupy",
    "requires": ["numba_cuda"],
    "priority": 30,
    "description": "Numba CUDA kernels on CuPy arrays (warp/block row reductions, two-stage "
    "channel reductions)",
}
