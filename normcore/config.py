"""normcore's configuration: every ``NORMCORE_*`` environment variable, read once by one parser.

:data:`settings` holds the core's variables, read when normcore is imported (as NetworkX's
``config``); change them from Python by assigning its attributes (``settings.fallback = True``),
or re-read the environment with :func:`reload`. Backends read their own variables once, at
their import, through the same readers (:func:`env_flag`, :func:`env_int`, :func:`env_float`,
:func:`env_str`): a value a reader cannot use gives one warning that names the variable, what
came and what is accepted, and the default is kept. No variable ever makes normcore (or a
backend) fail to load.

=============================  ========================  ==========================================
variable                       accepted                  meaning
=============================  ========================  ==========================================
``NORMCORE_BACKEND``           a backend name            the backend when none is named in a call
``NORMCORE_BACKEND_PRIORITY``  names, comma separated    automatic selection's order
``NORMCORE_FALLBACK``          1/0, true/false, yes/no   run missing kernels on the reference
``NORMCORE_LOG``               debug, info, warning      log records of the ``normcore`` logger
``NORMCORE_NUMBA_POOL_MB``     0 to 2**44 (MiB)          the numba output pool's limit (0: off)
``NORMCORE_NUMBA_SERIAL_MAX``  a whole number >= 0       largest input run on the calling thread
=============================  ========================  ==========================================

Developer switches, for normcore's own test suites, carry the separate prefix ``NORMCORE_TEST_``:

==================================  ======================  ======================================
variable                            accepted                meaning
==================================  ======================  ======================================
``NORMCORE_TEST_BACKEND``           names, comma separated  backends the test suites run on
``NORMCORE_TEST_QUICK``             1/0, true/false         the conformance kit's short run
``NORMCORE_TEST_CUDASIM_SHUFFLE``   1/0, true/false         CUDA simulator: emulate warp shuffles
==================================  ======================  ======================================

>>> from normcore.config import settings
>>> settings.fallback
False
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

__all__ = ["Settings", "settings", "reload", "env_flag", "env_int", "env_float", "env_str"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _warn(name: str, raw: str, accepted: str, default: object) -> None:
    warnings.warn(f"{name}={raw!r} is not {accepted}; using the default {default!r}",
                  stacklevel=3)


def env_str(name: str, default: str = "") -> str:
    """The variable's value stripped of white space, or ``default`` when it is not set."""
    raw = os.environ.get(name)
    return default if raw is None else raw.strip()


def env_flag(name: str, default: bool = False) -> bool:
    """A boolean: 1/true/yes/on or 0/false/no/off/'' (any case)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    _warn(name, raw, "a boolean (1/0, true/false, yes/no, on/off)", default)
    return default


def env_int(name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    """A whole number of at least ``minimum`` (and at most ``maximum``, if given)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        _warn(name, raw, f"a whole number {_bounds(minimum, maximum)}", default)
        return default
    return value


def env_float(name: str, default: float, minimum: float = 0.0,
              maximum: float | None = None) -> float:
    """A finite number of at least ``minimum`` (and at most ``maximum``, if given)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
        _warn(name, raw, f"a finite number {_bounds(minimum, maximum)}", default)
        return default
    return value


def _bounds(minimum: float, maximum: float | None) -> str:
    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else f"{v:g}"

    return f">= {num(minimum)}" if maximum is None else f"from {num(minimum)} to {num(maximum)}"


@dataclass
class Settings:
    """The core's configuration (see the module docstring for each variable)."""

    #: ``NORMCORE_BACKEND``: the backend when a call names none and no use_backend() is active.
    backend: str = ""
    #: ``NORMCORE_BACKEND_PRIORITY``: automatic selection tries these first, in this order.
    backend_priority: tuple[str, ...] = ()
    #: ``NORMCORE_FALLBACK``: a partial backend's missing kernels run on the reference.
    fallback: bool = False
    #: ``NORMCORE_LOG``: the level of the ``normcore`` logger's stderr handler ('' for none).
    log: str = ""

    @classmethod
    def from_environment(cls) -> Settings:
        priority = tuple(n.strip() for n in env_str("NORMCORE_BACKEND_PRIORITY").split(",")
                         if n.strip())
        return cls(backend=env_str("NORMCORE_BACKEND"), backend_priority=priority,
                   fallback=env_flag("NORMCORE_FALLBACK"), log=env_str("NORMCORE_LOG"))


#: Read once, at import.
settings = Settings.from_environment()


def reload() -> Settings:
    """Read the environment again into :data:`settings` (the same object) and return it."""
    fresh = Settings.from_environment()
    for name in fresh.__dataclass_fields__:
        setattr(settings, name, getattr(fresh, name))
    return settings
