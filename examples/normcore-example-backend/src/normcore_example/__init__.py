"""normcore-example-backend: a minimal third-party normcore backend in plain NumPy.

The ``normcore.backends`` entry point ``example = normcore_example:ExampleBackend`` names the
factory; ``normcore.backend_info`` points at :data:`normcore_example.info.INFO`. Importing this
package is light: the backend module (and normcore) are imported on first access to
``ExampleBackend``, so reading the info entry point costs nothing.
"""

from typing import Any

__all__ = ["ExampleBackend"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:  # PEP 562: import the backend lazily
    if name == "ExampleBackend":
        from .backend import ExampleBackend

        return ExampleBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
