"""Backend discovery, selection precedence, and isolation of broken or partial backends."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import normcore
from normcore import config, registry
from normcore.backend import Availability, Backend
from normcore_numpy.backend import NumpyBackend


@pytest.fixture
def clean_registry():
    registry.refresh()
    yield
    registry.refresh()


def test_import_normcore_loads_no_backend():
    code = ("import sys, normcore; "
            "bad = [m for m in sys.modules if m.startswith(('numba', 'cupy', 'normcore_'))]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_first_party_backends_are_discovered_through_entry_points():
    names = registry.backend_names()
    assert {"numpy", "numba", "numba-cuda"} <= set(names)
    rows = {r.name: r for r in normcore.list_backends(check=True)}
    assert rows["numpy"].available and rows["numpy"].distribution == "normcore"


def test_unknown_backend_lists_installed_and_closest():
    with pytest.raises(normcore.BackendError) as info:
        normcore.get_backend("numpyy")
    msg = str(info.value)
    assert "'numpyy'" in msg and "numpy" in msg and "Did you mean 'numpy'" in msg


def test_get_backend_without_a_name_is_the_one_a_call_would_use():
    assert normcore.get_backend() is registry.resolve()[0]
    with normcore.use_backend("numpy"):
        assert normcore.get_backend(None).name == "numpy"


@pytest.mark.parametrize("bad", [1, 2.5, b"numpy", ["numpy"]])
def test_a_backend_that_is_not_a_name_is_a_type_error(bad):
    with pytest.raises(TypeError, match="a backend is named by a string"):
        normcore.get_backend(bad)
    with pytest.raises(TypeError, match="a backend is named by a string"):
        normcore.LayerNorm(4, backend=bad)


def test_selection_precedence(monkeypatch, clean_registry):
    registry.register("other", _Other, priority=-5)
    monkeypatch.setattr(config.settings, "backend", "other")
    assert registry.resolve()[0] is normcore.get_backend("other")
    assert "environment" in registry.resolve()[1]
    with normcore.use_backend("numpy"):
        assert registry.resolve()[0].name == "numpy"  # context beats environment
        assert registry.resolve("other")[1] == "argument"  # argument beats context
        assert normcore.LayerNorm(2, backend="other").backend is normcore.get_backend("other")
    monkeypatch.setattr(config.settings, "backend", "")
    default, why = registry.resolve()
    assert default.name != "other" and "priority" in why


def test_default_is_fastest_available_cpu_backend(monkeypatch):
    monkeypatch.setattr(config.settings, "backend", "")
    monkeypatch.setattr(config.settings, "backend_priority", ())
    available = {r.name for r in normcore.list_backends(check=True) if r.available}
    expected = "numba" if "numba" in available else "numpy"
    assert registry.resolve()[0].name == expected


def test_default_selection_is_kept_until_register_or_refresh(monkeypatch, clean_registry):
    monkeypatch.setattr(config.settings, "backend", "")
    monkeypatch.setattr(config.settings, "backend_priority", ())
    before = registry.resolve()[0]
    assert registry.resolve()[0] is before  # kept: the same object, no second walk
    registry.register("other", _Other, priority=10_000)
    assert registry.resolve()[0].name == "other"  # register() forgets the kept answer
    monkeypatch.setattr(config.settings, "backend_priority", tuple(before.name.split(",")))
    assert registry.resolve()[0] is before  # kept per NORMCORE_BACKEND_PRIORITY value
    monkeypatch.setattr(config.settings, "backend_priority", ())
    assert registry.resolve()[0].name == "other"
    registry.refresh()
    assert registry.resolve()[0].name == before.name


def test_priority_environment_variable(monkeypatch):
    monkeypatch.setattr(config.settings, "backend_priority", tuple("numpy,numba".split(",")))
    assert registry.resolve()[0].name == "numpy"
    monkeypatch.setattr(config.settings, "backend_priority", tuple("nosuch,numpy".split(",")))
    with pytest.warns(UserWarning, match="nosuch"):
        assert registry.resolve()[0].name == "numpy"


def test_unknown_environment_backend_warns_and_falls_back(monkeypatch):
    monkeypatch.setattr(config.settings, "backend", "nosuchbackend")
    with pytest.warns(UserWarning, match="nosuchbackend"):
        backend, _ = registry.resolve()
    assert backend.name in registry.backend_names()


class _Other(NumpyBackend):
    name = "other"


class _Raises(NumpyBackend):
    def __init__(self):
        raise OSError("driver library missing")


class _OldApi(NumpyBackend):
    name = "old"
    api_version = 99


class _Unavailable(NumpyBackend):
    name = "away"

    def is_available(self):
        return Availability(False, "no device found")


def test_broken_backends_are_reported_and_isolated(clean_registry):
    registry.register("broken", _Raises, priority=1000)
    registry.register("old", _OldApi, priority=999)
    registry.register("away", _Unavailable, priority=998)
    rows = {r.name: r for r in normcore.list_backends(check=True)}
    assert rows["broken"].status == "broken" and "driver library missing" in rows["broken"].reason
    assert rows["old"].status == "broken" and "99" in rows["old"].reason \
        and str(normcore.API_VERSION) in rows["old"].reason
    assert rows["away"].status == "unavailable" and rows["away"].reason == "no device found"
    assert rows["numpy"].available
    with pytest.warns(UserWarning, match="skipping broken backend") as record:
        chosen, why = registry.resolve()
    assert {"'broken'", "'old'"} <= {w.message.args[0].split()[4].rstrip(":") for w in record}
    assert not any("'away'" in str(w.message) for w in record)  # unavailable: no warning
    assert chosen.name not in ("broken", "old", "away") and "skipped" in why
    with pytest.raises(normcore.BackendError) as info:
        normcore.get_backend("broken")
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(normcore.BackendError, match=f"api_version 99.*api_version {normcore.API_VERSION}"):
        normcore.get_backend("old")
    with pytest.raises(normcore.BackendError, match="no device found"):
        normcore.LayerNorm(3, backend="away")
    assert normcore.LayerNorm(3, backend="numpy")(np.ones((2, 3), np.float32)).shape == (2, 3)


class _Partial(NumpyBackend):
    name = "partial"
    kernels = NumpyBackend.kernels - {"dropout", "standardize_rows"}


def test_partial_backend_falls_back_only_when_asked(monkeypatch, clean_registry, caplog):
    registry.register("partial", _Partial)
    x = np.ones((3, 4), np.float32)
    normcore.LayerNorm(4, backend="partial")(x)  # implemented kernels run
    with pytest.raises(normcore.BackendError, match="NORMCORE_FALLBACK=1"):
        normcore.functional.dropout(x, 0.5, seed=1, backend="partial")
    monkeypatch.setattr(config.settings, "fallback", True)
    with caplog.at_level(logging.INFO, logger="normcore"):
        y, _ = normcore.functional.dropout(x, 0.5, seed=1, backend="partial")
    assert "falling back" in caplog.text
    ref, _ = normcore.functional.dropout(x, 0.5, seed=1, backend="numpy")
    np.testing.assert_array_equal(y, ref)
    from normcore.testing import verify
    results = verify("partial", quick=True)
    assert results and all(r.ok and not r.skipped for r in results)  # fallback covers the rest
    monkeypatch.setattr(config.settings, "fallback", False)
    skipped = [r for r in verify("partial", quick=True) if r.skipped]
    assert skipped and all(r.ok for r in skipped)
    with pytest.raises(normcore.BackendError):
        normcore.functional.dropout(x, 0.5, seed=1, backend="partial")


@pytest.mark.parametrize("raw,value", [("1", True), ("true", True), ("Yes", True), ("on", True),
                                       ("0", False), ("false", False), ("no", False), ("", False)])
def test_boolean_environment_variables_are_strict(monkeypatch, raw, value):
    monkeypatch.setenv("NORMCORE_X", raw)
    assert registry.env_flag("NORMCORE_X") is value


def test_bad_boolean_warns(monkeypatch):
    monkeypatch.setenv("NORMCORE_X", "maybe")
    with pytest.warns(UserWarning, match="not a boolean"):
        assert registry.env_flag("NORMCORE_X") is False


def test_context_does_not_leak_across_threads_or_tasks(clean_registry):
    registry.register("other", _Other, priority=-5)
    seen = {}

    def worker():
        seen["thread"] = registry.resolve()[0].name

    with normcore.use_backend("other"):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        inside = registry.resolve()[0].name
    assert inside == "other" and seen["thread"] != "other"

    async def task(name):
        if name:
            with normcore.use_backend(name):
                await asyncio.sleep(0.01)
                return registry.resolve()[0].name
        await asyncio.sleep(0.005)
        return registry.resolve()[0].name

    async def both():
        return await asyncio.gather(task("other"), task(None))

    with_ctx, without = asyncio.run(both())
    assert with_ctx == "other" and without != "other"


def test_kernel_logging_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="normcore"):
        normcore.functional.layer_norm(np.ones((2, 3), np.float32), 3, backend="numpy")
    assert "group_normalize ran on backend 'numpy'" in caplog.text


def test_backend_subclass_must_implement_array_conversion():
    with pytest.raises(TypeError):
        Backend()  # abstract


def test_numba_backend_is_unavailable_when_numbas_jit_is_disabled():
    """NUMBA_DISABLE_JIT=1 (a numba debugging switch) leaves the numba backend's LLVM kernels
    nothing to run on: the backend says so, and automatic selection takes the next one."""
    pytest.importorskip("numba")
    code = ("import numpy as np, normcore; "
            "rows = {r.name: r for r in normcore.list_backends(check=True)}; "
            "print(rows['numba'].status, '|', rows['numba'].reason); "
            "print(normcore.LayerNorm(4).backend.name)")
    env = {k: v for k, v in os.environ.items() if k != "NORMCORE_BACKEND"}
    env["NUMBA_DISABLE_JIT"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    status, chosen = out.stdout.strip().splitlines()
    assert status.startswith("unavailable | NUMBA_DISABLE_JIT is set")
    assert chosen != "numba"
