"""Backend discovery and selection.

Backends are found through two entry-point groups:

* ``normcore.backends``: ``name = "package.module:Factory"``, the backend itself, loaded on first use;
* ``normcore.backend_info`` (optional): ``name = "package:INFO"``, a dict of light metadata
  (``device``, ``array_library``, ``priority``, ``requires``, ``description``) read without
  importing the backend module, so that listing and automatic selection import no backend:
  :func:`list_backends` reads metadata only (``check=True`` loads each backend to ask it), and
  automatic selection loads only the backend it picks.

Selection, highest first: the ``backend=`` argument, :func:`use_backend` (a context variable, so
threads and asyncio tasks do not leak into each other), the ``NORMCORE_BACKEND`` environment
variable, then automatic selection: available ``cpu`` backends of NumPy arrays by priority
(highest first, or the order in ``NORMCORE_BACKEND_PRIORITY``). A backend that fails to import,
raises in its constructor, speaks another ``api_version`` or is unavailable never breaks
``import normcore``: it is reported with its error by :func:`list_backends`, skipped with a
warning by automatic selection, and raises (chaining the original error) when named explicitly.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import importlib.metadata as metadata
import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import config
from .backend import API_VERSION, KERNELS, OPTIONAL_KERNELS, SUPPORTED_API_VERSIONS, Backend

logger = logging.getLogger("normcore")

GROUP = "normcore.backends"
INFO_GROUP = "normcore.backend_info"
REFERENCE = "numpy"

_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("normcore_backend", default=None)
_lock = threading.Lock()
_loaded: dict[str, Backend] = {}
_errors: dict[str, BaseException] = {}
#: default_backend()'s answer by NORMCORE_BACKEND_PRIORITY value: the walk over the entries
#: (sorting, availability checks) cost a functional call without ``backend=`` 5 us, as much as
#: a small layer's kernel. Cleared with what it depends on (refresh, register).
_default_memo: dict[tuple[str, ...], tuple[Backend, str]] = {}
_warned: set[str] = set()  # broken backends already warned about by automatic selection
_discovered: dict[str, BackendEntry] | None = None


def _new_lock_after_fork() -> None:
    """In a forked child: a new ``_lock`` (a thread of the parent may have held the old one at the
    fork, while discovering backends say, and nothing in the child would ever release it)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)


class BackendError(RuntimeError):
    """A backend could not be found, loaded or used."""


@dataclass
class BackendEntry:
    """What the registry knows of one backend before (and after) loading it."""

    name: str
    value: str
    distribution: str = ""
    dist_version: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    entry_point: Any = None

    @property
    def device(self) -> str:
        return str(self.info.get("device", "cpu"))

    @property
    def priority(self) -> int:
        return int(self.info.get("priority", 0))

    @property
    def array_library(self) -> str:
        return str(self.info.get("array_library", "numpy"))

    @property
    def automatic(self) -> bool:
        """Whether automatic selection may pick it: a CPU backend of NumPy arrays."""
        return self.device == "cpu" and self.array_library == "numpy"

    def missing(self) -> list[str]:
        """The modules of ``info["requires"]`` that are not installed (found without importing)."""
        return [m for m in self.info.get("requires", ()) if importlib.util.find_spec(m) is None]


@dataclass(frozen=True)
class BackendStatus:
    """One row of :func:`list_backends`."""

    name: str
    version: str
    distribution: str
    device: str
    status: str  # "available", "unavailable", "broken", or "installed" (not loaded yet)
    reason: str = ""
    array_library: str = "numpy"

    @property
    def available(self) -> bool:
        return self.status == "available"


# ---------------------------------------------------------------------- environment helpers
env_flag = config.env_flag  # (kept here too: plugins and the kit import it from the registry)


# ---------------------------------------------------------------------- discovery
def _entry_points() -> dict[str, BackendEntry]:
    global _discovered
    if _discovered is not None:
        return _discovered
    with _lock:
        if _discovered is not None:
            return _discovered
        found: dict[str, BackendEntry] = {}
        for ep in metadata.entry_points(group=GROUP):
            dist = getattr(ep, "dist", None)
            found[ep.name] = BackendEntry(
                name=ep.name,
                value=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else "",
                dist_version=dist.version if dist is not None else "",
                entry_point=ep,
            )
        for ep in metadata.entry_points(group=INFO_GROUP):
            if ep.name not in found:
                continue
            try:
                info = ep.load()
                found[ep.name].info = dict(info) if isinstance(info, dict) else {}
            except Exception as exc:  # a broken info module only loses metadata
                logger.warning("backend %r: could not read %s metadata: %s", ep.name, INFO_GROUP, exc)
        _discovered = found
        return found


def refresh() -> None:
    """Forget discovered and loaded backends (after installing a plugin in a running process)."""
    global _discovered
    with _lock:
        _discovered = None
        _loaded.clear()
        _errors.clear()
        _warned.clear()
        _default_memo.clear()


def register(name: str, factory: Any, *, device: str = "cpu", priority: int = 0) -> None:
    """Register a backend in this process without packaging it (handy in notebooks and tests).

    ``factory`` is a Backend subclass or instance. Packaged plugins use entry points instead.
    """
    entries = _entry_points()
    with _lock:
        entries[name] = BackendEntry(name=name, value=repr(factory),
                                     info={"device": device, "priority": priority})
        entries[name].entry_point = factory
        _loaded.pop(name, None)
        _errors.pop(name, None)
        _default_memo.clear()


def backend_names() -> list[str]:
    """Names of every discovered backend (nothing is imported)."""
    return sorted(_entry_points())


def _load(name: str) -> Backend:
    """Import and construct a backend; raise BackendError chaining the original error."""
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        raise BackendError(_broken_message(name, _errors[name])) from _errors[name]
    entries = _entry_points()
    if name not in entries:
        raise BackendError(_unknown_message(name, list(entries)))
    entry = entries[name]
    try:
        target = entry.entry_point
        factory = target.load() if hasattr(target, "load") and hasattr(target, "group") else target
        backend = factory() if callable(factory) and not isinstance(factory, Backend) else factory
        if not isinstance(backend, Backend):
            raise TypeError(f"entry point {entry.value!r} gave {type(backend).__name__}, "
                            "expected a normcore.backend.Backend")
        version = getattr(backend, "api_version", None)
        if version not in SUPPORTED_API_VERSIONS:
            raise BackendError(f"backend {name!r} implements normcore backend api_version "
                               f"{version!r}, but this normcore supports api_version {API_VERSION} "
                               "(and 1, deprecated)")
        if version == 1:
            warnings.warn(f"backend {name!r} implements the deprecated backend contract version 1. "
                          "Version 2 adds array_library, mutable, synchronize(), from_dlpack(), "
                          "writable() and write(); their defaults keep this backend working "
                          "(NumPy arrays, mutable, nothing to synchronize). Check them and set "
                          "api_version = 2 (docs/writing-a-backend.md)",
                          DeprecationWarning, stacklevel=4)
        unknown = set(backend.kernels) - set(KERNELS) - set(OPTIONAL_KERNELS)
        if unknown:
            raise TypeError(f"backend {name!r} declares unknown kernels {sorted(unknown)}")
    except Exception as exc:
        with _lock:
            _errors[name] = exc
        raise BackendError(_broken_message(name, exc)) from exc
    with _lock:
        _loaded[name] = backend
    # a pickled module finds this process's instance by name (Backend.__reduce_ex__)
    backend.__dict__.setdefault("_loaded_by", get_backend)
    return backend


def _broken_message(name: str, exc: BaseException) -> str:
    if isinstance(exc, BackendError):
        return str(exc)
    return f"backend {name!r} failed to load: {type(exc).__name__}: {exc}"


def _unknown_message(name: str, installed: list[str]) -> str:
    close = difflib.get_close_matches(name, installed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unknown normcore backend {name!r}; installed backends: "
            f"{', '.join(sorted(installed)) or 'none'}.{hint}")


def get_backend(name: str | None = None) -> Backend:
    """The loaded backend called ``name``, or for None the one a call would use now (see
    :func:`resolve`); raises BackendError if unknown, broken or unavailable, TypeError if
    ``name`` is not a string.

    >>> import normcore
    >>> normcore.get_backend("numpy").name
    'numpy'
    """
    if name is None:
        return resolve(None)[0]
    if not isinstance(name, str):
        raise TypeError(f"a backend is named by a string (or passed as a normcore Backend), got "
                        f"{type(name).__name__} {name!r}")
    backend = _load(name)
    availability = backend.is_available()
    if not availability:
        raise BackendError(f"backend {name!r} is not available: {availability.reason}")
    return backend


def list_backends(check: bool = False) -> list[BackendStatus]:
    """Every discovered backend with its version and status.

    By default nothing is imported: a backend not used yet is ``"installed"`` (or
    ``"unavailable"`` when a module its metadata requires is missing), and one already loaded
    shows what it said. ``check=True`` loads each backend and asks whether it can run here.

    >>> import normcore
    >>> {r.name: r.status for r in normcore.list_backends(check=True)}["numpy"]
    'available'
    """
    rows = []
    for name, entry in sorted(_entry_points().items()):
        if check or name in _loaded or name in _errors:
            rows.append(_checked_status(name, entry))
            continue
        missing = entry.missing()
        version = entry.dist_version
        if missing:
            rows.append(BackendStatus(name, version, entry.distribution, entry.device,
                                      "unavailable", f"needs {', '.join(missing)} (not installed)",
                                      entry.array_library))
        else:
            rows.append(BackendStatus(name, version, entry.distribution, entry.device, "installed",
                                      "not loaded yet: list_backends(check=True) loads it",
                                      entry.array_library))
    return rows


def _checked_status(name: str, entry: BackendEntry) -> BackendStatus:
    try:
        backend = _load(name)
    except BackendError as exc:
        cause = exc.__cause__ or exc
        return BackendStatus(name, entry.dist_version, entry.distribution, entry.device,
                             "broken", f"{type(cause).__name__}: {cause}", entry.array_library)
    availability = backend.is_available()
    return BackendStatus(
        name, backend.version() or entry.dist_version, entry.distribution, backend.device,
        "available" if availability else "unavailable", availability.reason,
        getattr(backend, "array_library", "numpy"))


# ---------------------------------------------------------------------- selection
@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Use backend ``name`` for layers built and functional calls made inside the block.

    >>> import normcore
    >>> with normcore.use_backend("numpy"):
    ...     layer = normcore.LayerNorm(4)
    >>> layer.backend.name
    'numpy'
    """
    backend = get_backend(name)
    token = _context.set(name)
    try:
        yield backend
    finally:
        _context.reset(token)


def _priority_order() -> list[BackendEntry]:
    """Automatic selection's candidates, best first: CPU backends of NumPy arrays."""
    entries = _entry_points()
    cpu = sorted((e for e in entries.values() if e.automatic),
                 key=lambda e: (-e.priority, e.name))
    wanted = config.settings.backend_priority
    if not wanted:
        return cpu
    for n in wanted:
        if n not in entries:
            warnings.warn(f"NORMCORE_BACKEND_PRIORITY names {_unknown_message(n, list(entries))}",
                          stacklevel=4)
        elif not entries[n].automatic:
            warnings.warn(f"NORMCORE_BACKEND_PRIORITY names {n!r}, which automatic selection "
                          f"never picks (device {entries[n].device!r}, "
                          f"{entries[n].array_library} arrays): name it with backend=, "
                          "use_backend() or NORMCORE_BACKEND", stacklevel=4)
    named = [entries[n] for n in wanted if n in entries and entries[n].automatic]
    return named + [e for e in cpu if e.name not in wanted]


def default_backend() -> tuple[Backend, str]:
    """The automatically selected backend and why it was chosen.

    Broken backends are skipped with a warning (once per process), unavailable ones with an
    INFO log record: a machine without a GPU or without Numba is not a problem to shout about.
    The answer is kept until ``refresh()`` or ``register()`` (per NORMCORE_BACKEND_PRIORITY value).
    """
    key = config.settings.backend_priority
    memo = _default_memo.get(key)
    if memo is None:
        memo = _default_memo[key] = _first_available()
    return memo


def _first_available() -> tuple[Backend, str]:
    skipped = []
    for entry in _priority_order():
        missing = entry.missing()
        if missing:  # known from metadata: nothing imported to learn it
            skipped.append(f"{entry.name} (needs {', '.join(missing)})")
            logger.info("skipping backend %r: needs %s", entry.name, ", ".join(missing))
            continue
        try:
            backend = get_backend(entry.name)
        except BackendError as exc:
            skipped.append(f"{entry.name} ({exc})")
            if entry.name in _errors and entry.name not in _warned:
                _warned.add(entry.name)
                warnings.warn(f"normcore: skipping broken backend {entry.name!r}: {exc}",
                              stacklevel=4)
            else:
                logger.info("skipping backend %r: %s", entry.name, exc)
            continue
        why = ("first available in NORMCORE_BACKEND_PRIORITY"
               if config.settings.backend_priority
               else f"highest-priority available CPU backend (priority {entry.priority})")
        if skipped:
            why += "; skipped " + "; ".join(skipped)
        return backend, why
    raise BackendError("no normcore backend is available: " + "; ".join(skipped))


def resolve(backend: str | Backend | None = None) -> tuple[Backend, str]:
    """The backend a call will use and the reason (argument > context > environment > default)."""
    if isinstance(backend, Backend):
        return backend, "argument"
    if backend is not None:
        return get_backend(backend), "argument"
    ctx = _context.get()
    if ctx is not None:
        return get_backend(ctx), "use_backend() context"
    env = config.settings.backend
    if env:
        if env in _entry_points():
            return get_backend(env), "NORMCORE_BACKEND environment variable"
        warnings.warn(f"NORMCORE_BACKEND: {_unknown_message(env, list(_entry_points()))}; "
                      "using automatic selection", stacklevel=3)
    return default_backend()


def select(backend: str | Backend | None = None) -> Backend:
    """Resolve and log the backend for one layer or call."""
    if isinstance(backend, Backend):
        return backend  # a module passing its own backend: the module logs why it has it
    chosen, why = resolve(backend)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("backend %r selected (%s)", chosen.name, why)
    return chosen


def kernel(backend: Backend, name: str) -> Any:
    """The kernel ``name`` of ``backend``, bound: the one place that decides which code runs.

    The backend's own when it lists ``name`` in ``kernels``; for an optional kernel it does not
    list, the base class's composition of its required kernels; else the reference's when
    fallback is enabled (``NORMCORE_FALLBACK=1``), and a BackendError otherwise.
    """
    if name in backend.kernels:
        return getattr(backend, name)
    if name in OPTIONAL_KERNELS:
        return functools.partial(getattr(Backend, name), backend)
    if config.settings.fallback:
        logger.info("backend %r does not implement %s; falling back to %r",
                    backend.name, name, REFERENCE)
        reference = get_backend(REFERENCE)
        return _FallbackKernel(getattr(reference, name), backend, reference)
    raise BackendError(f"backend {backend.name!r} does not implement kernel {name!r}; set "
                       f"NORMCORE_FALLBACK=1 to run it on the {REFERENCE!r} reference backend")


def configure_logging(level: str | None = None) -> None:
    """Send the ``normcore`` logger's records at ``level`` (default: ``NORMCORE_LOG``) to stderr.

    Runs at import; does nothing unless ``NORMCORE_LOG`` is set (``debug``, ``info``, ``warning``)
    or a level is given. Adds one StreamHandler to the ``normcore`` logger, never to the root one.
    """
    raw = level.strip() if level is not None else config.settings.log
    if not raw:
        return
    value = logging.getLevelName(raw.upper())
    if not isinstance(value, int):
        warnings.warn(f"NORMCORE_LOG={raw!r} is not a logging level (use debug, info or warning)",
                      stacklevel=2)
        return
    if not any(getattr(h, "_normcore_env", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("normcore %(levelname)s: %(message)s"))
        handler._normcore_env = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    for h in logger.handlers:
        if getattr(h, "_normcore_env", False):
            h.setLevel(value)
    logger.setLevel(value)


configure_logging()


class _FallbackKernel:
    """Runs a reference kernel on arrays of another backend: moves inputs to NumPy and back."""

    def __init__(self, fn: Any, backend: Backend, reference: Backend) -> None:
        self.fn, self.backend, self.reference = fn, backend, reference

    def _in(self, a: Any) -> Any:
        return self.backend.to_numpy(a) if _is_array(a) else a

    def _out(self, a: Any) -> Any:
        if isinstance(a, tuple):
            return tuple(self._out(v) for v in a)
        return self.backend.asarray(a) if _is_array(a) else a

    def __call__(self, *args: Any) -> Any:
        return self._out(self.fn(*(self._in(a) for a in args)))


def _is_array(a: Any) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")
