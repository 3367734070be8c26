"""The conformance kit: the cases normcore tests its own backends with, runnable against any
installed backend.

* ``normcore verify --backend NAME`` runs every case and prints a report (exit 0 when it conforms);
* ``NORMCORE_TEST_BACKEND=NAME pytest --pyargs normcore.testing`` runs them under pytest;
* :func:`verify` returns the results to a program.

Cases compare a backend with torch's golden vectors (replayed through the modules: forward,
backward, gradient accumulation, running statistics, evaluation mode, state_dict) and with the
NumPy reference kernel by kernel (odd shapes, strides, channels-last, float16, precision, dropout
masks). Tolerances per dtype are in :data:`TOLERANCES`.

>>> from normcore.testing import verify
>>> results = verify("numpy", quick=True)
>>> all(r.ok for r in results)
True
"""

from .cases import TOLERANCES, Case, CaseResult, all_cases, applies, assert_close, verify

__all__ = ["TOLERANCES", "Case", "CaseResult", "all_cases", "applies", "assert_close", "verify"]
