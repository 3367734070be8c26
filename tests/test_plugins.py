"""Third-party plugins, installed as a user would install them (``make setup`` runs
``pip install -e examples/normcore-example-backend -e examples/normcore-broken-backend``).

Tests skip when the example distributions are not installed.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import normcore
from normcore import cli, config, registry
from normcore.backend import API_VERSION


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_example = pytest.mark.skipif(
    not _installed("normcore-example-backend"),
    reason="pip install -e examples/normcore-example-backend")
needs_broken = pytest.mark.skipif(
    not _installed("normcore-broken-backend"),
    reason="pip install -e examples/normcore-broken-backend")

BROKEN = ("broken-import", "broken-init", "broken-api")


def run_cli(*args: str, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "normcore", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=600)


@pytest.fixture
def fresh_registry():
    """Rediscover entry points before and after (other tests may have registered backends)."""
    registry.refresh()
    yield
    registry.refresh()


# ---------------------------------------------------------------------- the example plugin
@needs_example
def test_example_is_discovered_with_its_metadata(fresh_registry):
    rows = {s.name: s for s in normcore.list_backends(check=True)}
    assert rows["example"].status == "available"
    assert rows["example"].distribution == "normcore-example-backend"
    assert rows["example"].device == "cpu"
    entry = registry._entry_points()["example"]
    assert entry.priority == 1  # low: never the automatic choice over the built-in backends


@needs_example
def test_example_never_becomes_the_default(fresh_registry, monkeypatch):
    monkeypatch.delenv("NORMCORE_BACKEND", raising=False)
    monkeypatch.delenv("NORMCORE_BACKEND_PRIORITY", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen, _ = registry.resolve(None)
    assert chosen.name != "example"


@needs_example
def test_example_info_is_light():
    """The backend_info entry point must not import the backend module (nor normcore's kernels)."""
    code = ("import sys, importlib.metadata as m\n"
            "ep = [e for e in m.entry_points(group='normcore.backend_info') if e.name == 'example'][0]\n"
            "info = ep.load()\n"
            "assert info['priority'] == 1 and info['device'] == 'cpu', info\n"
            "assert 'normcore_example.backend' not in sys.modules\n"
            "assert 'normcore' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@needs_example
def test_example_runs_every_layer(fresh_registry, rng):
    x = rng.standard_normal((4, 8, 5, 5)).astype(np.float32)
    for make in (lambda b: normcore.BatchNorm2d(8, backend=b),
                 lambda b: normcore.GroupNorm(4, 8, backend=b),
                 lambda b: normcore.InstanceNorm2d(8, affine=True, backend=b),
                 lambda b: normcore.LayerNorm((5, 5), backend=b),
                 lambda b: normcore.RMSNorm(5, backend=b),
                 lambda b: normcore.Dropout(0.3, seed=7, backend=b)):
        ref, ex = make("numpy"), make("example")
        np.testing.assert_allclose(ex(x), ref(x), rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(ex.backward(x), ref.backward(x), rtol=2e-4, atol=2e-5)
    F = normcore.functional
    w, dy = rng.standard_normal((6, 3, 3, 3)), rng.standard_normal((6, 3, 3, 3))
    for kw in ({}, {"unbiased": True, "eps_in_root": False}):
        (y_ex, s_ex), (y_ref, s_ref) = (F.weight_standardization(w, backend=b, **kw)
                                        for b in ("example", "numpy"))
        np.testing.assert_allclose(y_ex, y_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(F.weight_standardization_backward(dy, s_ex),
                                   F.weight_standardization_backward(dy, s_ref),
                                   rtol=1e-9, atol=1e-12)


@needs_example
def test_example_in_info():
    proc = run_cli("info", "--check")
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("example ")][0]
    assert "available" in line and "normcore-example-backend" in line


@needs_example
def test_example_passes_verify():
    proc = run_cli("verify", "--backend", "example", "--quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " 0 failed, 0 skipped" in proc.stdout


@needs_example
def test_example_in_bench():
    proc = run_cli("bench", "--quick", "--backend", "example", "--layer", "layernorm",
                   "--layer", "groupnorm", "--repeat", "2", "--no-torch")
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split() for ln in proc.stdout.splitlines() if " example " in f" {ln} "]
    assert len(rows) == 4  # 2 layers x forward/backward
    assert all("error" not in r for r in rows)


@needs_example
def test_wrong_backend_fails_verify_with_a_readable_report(fresh_registry, capsys):
    """A subclass of the example with one kernel off by a factor must not pass."""
    from normcore_example import ExampleBackend

    class OffByAFactor(ExampleBackend):
        name = "off-by-a-factor"

        def group_normalize(self, x4, weight, bias, eps, center):
            y, mean, var = super().group_normalize(x4, weight, bias, eps, center)
            return y * 1.01, mean, var

    registry.register("off-by-a-factor", OffByAFactor)
    assert cli.main(["--plain", "verify", "--backend", "off-by-a-factor", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "FAILED golden:" in out or "FAILED group" in out
    assert "elements differ" in out  # the assertion message, not a traceback
    assert "Traceback" not in out
    summary = out.strip().splitlines()[-1]
    passed, failed = int(summary.split(" passed")[0]), int(summary.split(", ")[1].split()[0])
    assert passed > 0 and failed > 0 and "does NOT conform" in summary
    # channel kernels are untouched: their cases still pass
    assert "FAILED channel_normalize" not in out


@needs_example
def test_wrong_backend_fails_verify_in_a_subprocess():
    """The same through the real entry point: exit status 1."""
    code = ("import sys\n"
            "from normcore import cli, registry\n"
            "from normcore_example import ExampleBackend\n"
            "class Bad(ExampleBackend):\n"
            "    name = 'bad'\n"
            "    def channel_moments(self, x3):\n"
            "        m, v = super().channel_moments(x3)\n"
            "        return m, v * 2\n"
            "registry.register('bad', Bad)\n"
            "sys.exit(cli.main(['--plain', 'verify', '--backend', 'bad', '--quick']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAILED" in proc.stdout and " failed, " in proc.stdout.splitlines()[-1]


# ---------------------------------------------------------------------- the broken plugins
@needs_broken
def test_broken_plugins_listed_with_their_errors(fresh_registry):
    rows = {s.name: s for s in normcore.list_backends(check=True)}
    for name in BROKEN:
        assert rows[name].status == "broken"
        assert rows[name].distribution == "normcore-broken-backend"
    assert "ImportError" in rows["broken-import"].reason
    assert "fails to import on purpose" in rows["broken-import"].reason
    assert "RuntimeError" in rows["broken-init"].reason
    assert "constructor fails on purpose" in rows["broken-init"].reason
    assert "999" in rows["broken-api"].reason and str(API_VERSION) in rows["broken-api"].reason
    assert rows["numpy"].available


@needs_broken
def test_broken_plugins_in_info():
    proc = run_cli("info", "--check")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "broken-import is broken: ImportError: normcore_broken: this module fails to import" in out
    assert "broken-init is broken: RuntimeError: normcore_broken: this constructor fails" in out
    assert "broken-api is broken:" in out and "api_version 999" in out


@needs_broken
def test_import_normcore_and_other_backends_keep_working():
    code = ("import numpy as np, normcore\n"
            "for name in ('numpy',):\n"
            "    ln = normcore.LayerNorm(4, backend=name)\n"
            "    ln.backward(ln(np.ones((2, 4), np.float32)))\n"
            "bn = normcore.BatchNorm1d(3)\n"
            "bn(np.ones((4, 3), np.float32))\n"
            "print('ok', bn.backend.name)\n")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


@needs_broken
def test_automatic_selection_skips_broken_with_a_warning(fresh_registry, monkeypatch):
    monkeypatch.delenv("NORMCORE_BACKEND", raising=False)
    monkeypatch.setattr(config.settings, "backend_priority", (*BROKEN, "numpy"))
    with pytest.warns(UserWarning) as record:
        chosen, why = registry.resolve(None)
    assert chosen.name == "numpy"
    messages = " ".join(str(w.message) for w in record)
    for name in BROKEN:
        assert f"skipping broken backend {name!r}" in messages
        assert name in why  # the reason lists what was skipped


@needs_broken
@pytest.mark.parametrize("name, cause, text", [
    ("broken-import", ImportError, "fails to import on purpose"),
    ("broken-init", RuntimeError, "constructor fails on purpose"),
])
def test_naming_a_broken_backend_raises_chaining_the_error(fresh_registry, name, cause, text):
    with pytest.raises(normcore.BackendError) as info:
        normcore.get_backend(name)
    assert isinstance(info.value.__cause__, cause)
    assert text in str(info.value.__cause__)
    assert name in str(info.value)
    with pytest.raises(normcore.BackendError):  # and again, from the cached error
        normcore.LayerNorm(4, backend=name)


@needs_broken
def test_api_version_mismatch_names_both_versions(fresh_registry):
    with pytest.raises(normcore.BackendError) as info:
        normcore.get_backend("broken-api")
    message = str(info.value)
    assert "api_version 999" in message and f"api_version {API_VERSION}" in message


@needs_broken
def test_verify_on_broken_backend_exits_1(capsys, fresh_registry):
    assert cli.main(["--plain", "verify", "--backend", "broken-init"]) == 1
    out = capsys.readouterr().out
    assert "broken-init" in out and "constructor fails on purpose" in out
