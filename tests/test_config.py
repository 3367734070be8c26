"""Every NORMCORE_* variable goes through normcore.config: a value it cannot use warns, naming
the variable and what is accepted, and keeps the default; no value stops a backend loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from normcore import config


@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "abc", "-5", "1e30", "0x10"])
def test_env_float_out_of_range_warns_and_keeps_the_default(monkeypatch, raw):
    monkeypatch.setenv("NORMCORE_X", raw)
    with pytest.warns(UserWarning, match=r"NORMCORE_X='.*' is not a finite number from 0 to 1000;"
                                         r" using the default 2\.5"):
        assert config.env_float("NORMCORE_X", 2.5, maximum=1000.0) == 2.5


@pytest.mark.parametrize("raw", ["inf", "abc", "-5", "1e30", "2.5", str(1 << 63)])
def test_env_int_out_of_range_warns_and_keeps_the_default(monkeypatch, raw):
    monkeypatch.setenv("NORMCORE_X", raw)
    with pytest.warns(UserWarning, match=rf"NORMCORE_X='.*' is not a whole number from 0 to "
                                         rf"{sys.maxsize}; using the default 7"):
        assert config.env_int("NORMCORE_X", 7, maximum=sys.maxsize) == 7


def test_values_within_the_bounds_are_taken(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for raw, want in [("0", 0.0), (" 1000 ", 1000.0), ("1e3", 1000.0), ("0.5", 0.5)]:
            monkeypatch.setenv("NORMCORE_X", raw)
            assert config.env_float("NORMCORE_X", 2.5, maximum=1000.0) == want
        for raw, want in [("0", 0), (str(sys.maxsize), sys.maxsize)]:
            monkeypatch.setenv("NORMCORE_X", raw)
            assert config.env_int("NORMCORE_X", 7, maximum=sys.maxsize) == want
        monkeypatch.setenv("NORMCORE_X", "")
        assert config.env_float("NORMCORE_X", 2.5, maximum=1.0) == 2.5  # empty: unset


LOAD = """
import json, os, warnings
import numpy as np
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import normcore
    from normcore_numba import _plan, _pool
    layer = normcore.LayerNorm(4096, backend="numba")
    x = np.random.default_rng(0).standard_normal((128, 4096)).astype(np.float32)  # 2 MiB
    y = layer(x)
ok = bool(np.allclose(y, normcore.LayerNorm(4096, backend="numpy")(x), atol=1e-4))
for name in ("NORMCORE_NUMBA_POOL_MB", "NORMCORE_NUMBA_SERIAL_MAX"):
    del os.environ[name]
status = {b.name: b.status for b in normcore.list_backends(check=True)}
print(json.dumps({"limit": _pool.POOL.limit, "default_limit": _pool._default_limit(),
                  "serial_max": _plan.SERIAL_MAX, "numba": status["numba"], "ok": ok,
                  "pooled": y.base is not None,
                  "warnings": [str(w.message) for w in caught]}))
"""


@pytest.mark.parametrize("raw", ["inf", "abc", "-5", "1e30"])
def test_a_bad_numba_setting_warns_and_the_backend_loads(raw):
    """NORMCORE_NUMBA_POOL_MB=inf stopped the numba backend loading (OverflowError); abc or -5
    silently turned the pool off, and 1e30 MiB was taken as a limit. NORMCORE_NUMBA_SERIAL_MAX=-5
    silently meant 0. Each now warns and keeps the default; the backend loads and runs."""
    pytest.importorskip("numba")
    env = dict(os.environ, NORMCORE_NUMBA_POOL_MB=raw, NORMCORE_NUMBA_SERIAL_MAX=raw)
    run = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, env=env,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.splitlines()[-1])
    assert got["numba"] == "available" and got["ok"]
    assert got["limit"] == got["default_limit"] > 0 and got["pooled"]
    assert got["serial_max"] == 32768
    mine = [w for w in got["warnings"] if w.startswith("NORMCORE_NUMBA_")]
    assert sorted(mine) == sorted([
        f"NORMCORE_NUMBA_POOL_MB={raw!r} is not a finite number from 0 to {1 << 44}; using the "
        f"default {got['default_limit'] / (1 << 20)!r}",
        f"NORMCORE_NUMBA_SERIAL_MAX={raw!r} is not a whole number from 0 to {sys.maxsize}; "
        f"using the default 32768",
    ]), got["warnings"]


def test_the_pool_limit_is_a_number_of_mebibytes():
    pytest.importorskip("numba")
    code = "from normcore_numba import _pool; print(_pool.POOL.limit)"
    for raw, want in [("0", 0), ("1.5", 3 << 19), ("64", 64 << 20)]:
        run = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                             text=True, check=True, env=dict(os.environ, NORMCORE_NUMBA_POOL_MB=raw))
        assert int(run.stdout) == want, raw


CUDASIM = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from normcore_cuda import _kernels
print(_kernels.SIM_SHUFFLE, [str(w.message) for w in caught if "NORMCORE" in str(w.message)])
"""


@pytest.mark.parametrize(("raw", "shuffle", "warned"),
                         [("1", True, False), ("true", True, False), ("0", False, False),
                          ("maybe", False, True)])
def test_the_cuda_simulator_shuffle_switch_is_a_flag(raw, shuffle, warned):
    """NORMCORE_TEST_CUDASIM_SHUFFLE took only '1': 'true' was off and 'maybe' said nothing."""
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NORMCORE_TEST_CUDASIM_SHUFFLE=raw)
    run = subprocess.run([sys.executable, "-c", CUDASIM], capture_output=True, text=True, env=env,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith(f"{shuffle} ["), run.stdout
    assert ("NORMCORE_TEST_CUDASIM_SHUFFLE='maybe' is not a boolean" in run.stdout) == warned


def test_settings_are_read_once_and_reload_reads_again(monkeypatch):
    from normcore import config

    before = config.settings.backend_priority
    monkeypatch.setenv("NORMCORE_BACKEND_PRIORITY", "numpy, numba,")
    monkeypatch.setenv("NORMCORE_FALLBACK", "maybe")
    assert config.settings.backend_priority == before  # read at import, not per call
    try:
        with pytest.warns(UserWarning, match="NORMCORE_FALLBACK='maybe' is not a boolean"):
            same = config.reload()
        assert same is config.settings
        assert config.settings.backend_priority == ("numpy", "numba")
        assert config.settings.fallback is False
    finally:
        monkeypatch.undo()
        config.reload()
