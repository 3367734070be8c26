"""The ``normcore`` command line: info, bench, verify (in-process through ``cli.main`` and once as a
real subprocess), and the NORMCORE_LOG hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import normcore
from normcore import bench, cli, registry

BACKEND = "numpy"  # always installed: the reference


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300):
    """``python -m normcore ARGS`` in a subprocess; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "normcore", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


def test_info_lists_environment_backends_and_default(capsys):
    assert cli.main(["--plain", "info"]) == 0
    out = capsys.readouterr().out
    assert f"normcore {normcore.__version__}" in out
    for word in ("Python", "NumPy", "Numba", "CuPy", "threads"):
        assert word in out
    line = next(row for row in out.splitlines() if row.startswith("Numba threading layer"))
    assert line.split()[-1] == (bench.threading_layer() or "-")
    for status in registry.list_backends(check=True):
        assert status.name in out
    chosen, why = registry.resolve(None)
    assert f"default backend: {chosen.name}, chosen by {why}" in out


def test_info_with_rich(capsys):
    pytest.importorskip("rich")
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "default backend:" in out


def test_info_subprocess_honours_environment():
    proc = run_cli("info", env={"NORMCORE_BACKEND": "numpy"})
    assert proc.returncode == 0, proc.stderr
    assert "default backend: numpy, chosen by NORMCORE_BACKEND environment variable" in proc.stdout


def test_verify_conforming_backend(capsys):
    assert cli.main(["--plain", "verify", "--backend", BACKEND, "--quick"]) == 0
    out = capsys.readouterr().out
    from normcore.testing import verify

    results = verify(BACKEND, quick=True)
    assert f"{len(results)} passed, 0 failed, 0 skipped" in out
    assert "conforms" in out


def test_verify_unknown_backend_exits_1(capsys):
    assert cli.main(["--plain", "verify", "--backend", "nope"]) == 1
    assert "unknown normcore backend 'nope'" in capsys.readouterr().out


def test_verify_partial_backend_reports_skips(capsys, monkeypatch):
    from normcore_numpy.backend import NumpyBackend

    class Partial(NumpyBackend):
        name = "partial-cli"
        kernels = frozenset({"channel_moments", "channel_normalize", "channel_normalize_backward",
                             "running_update"})

    monkeypatch.delenv("NORMCORE_FALLBACK", raising=False)
    registry.register("partial-cli", Partial)
    try:
        assert cli.main(["--plain", "verify", "--backend", "partial-cli", "--quick"]) == 0
    finally:
        registry.refresh()
    out = capsys.readouterr().out
    summary = [line for line in out.splitlines() if "passed," in line][0]
    skipped = int(summary.split(" skipped")[0].rsplit(", ", 1)[1])
    assert skipped > 0 and " 0 failed" in summary


def test_bench_quick_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = cli.main(["--plain", "bench", "--quick", "--backend", BACKEND, "--layer", "layernorm",
                     "--layer", "batchnorm2d-eval", "--repeat", "2", "--no-torch",
                     "--json", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "LayerNorm" in out and "BatchNorm2d (eval)" in out and "GB/s" in out
    data = json.loads(path.read_text())
    rows = data["rows"]
    assert {r["pass"] for r in rows} == {"forward", "backward"}
    assert all(r["backend"] == BACKEND and r["ms"] > 0 and r["gbs"] > 0 for r in rows)
    assert all(r["speedup_reference"] == pytest.approx(1.0) for r in rows)
    # the eval case has a forward only
    assert [r["pass"] for r in rows if r["layer"] == "BatchNorm2d (eval)"] == ["forward"]
    assert data["environment"]["threads"] == bench.thread_count()


def test_bench_rejects_unknown_names(capsys):
    assert cli.main(["--plain", "bench", "--quick", "--backend", "nope"]) == 2
    assert cli.main(["--plain", "bench", "--quick", "--layer", "convnorm"]) == 2
    out = capsys.readouterr().out
    assert "unknown normcore backend 'nope'" in out and "unknown layer 'convnorm'" in out


def test_bench_plot_without_matplotlib_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code = cli.main(["--plain", "bench", "--quick", "--plot", str(tmp_path / "b.png")])
    assert code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().out


def test_bench_torch_column():
    pytest.importorskip("torch")
    cases = bench.default_cases(["rmsnorm"], quick=True)
    report = bench.run(cases, [BACKEND], repeat=2)
    by_backend = {(r.backend, r.pass_): r for r in report.rows}
    assert ("torch", "forward") in by_backend and ("torch", "backward") in by_backend
    assert not by_backend[("torch", "backward")].error
    assert by_backend[(BACKEND, "forward")].speedup_torch is not None


def test_bench_default_grid_matches_the_issue():
    cases = bench.default_cases()
    shapes = {(c.layer, c.shape) for c in cases}
    assert ("batchnorm2d", (32, 64, 56, 56)) in shapes
    assert ("layernorm", (4096, 4096)) in shapes
    assert ("groupnorm", (16, 256, 32, 32)) in shapes
    assert ("groupnorm", (64, 256, 32, 32)) in shapes  # past the last-level cache
    assert ("batchnorm2d-eval", (32, 64, 56, 56)) in shapes
    assert ("batchnorm1d", (4096, 512)) in shapes  # (N, C) input: rows of C channels
    assert ("batchnorm2d-nhwc", (32, 64, 56, 56)) in shapes  # channels-last strides
    assert len(cases) == 13


def test_bench_nhwc_case_feeds_channels_last_strides():
    case = bench.default_cases(["BatchNorm2d (NHWC)"], quick=True)[0]
    x = case.arrange(np.arange(np.prod(case.shape), dtype=np.float32).reshape(case.shape))
    assert x.shape == case.shape and not x.flags.c_contiguous
    assert x.strides[1] == x.itemsize  # C varies fastest: an NHWC buffer
    assert np.array_equal(x, np.arange(x.size, dtype=np.float32).reshape(case.shape))
    report = bench.run([case], [BACKEND], repeat=2, use_torch=False)
    assert {r.pass_ for r in report.rows if not r.error} == {"forward", "backward"}
    torch = pytest.importorskip("torch")
    assert torch.from_numpy(x).is_contiguous(memory_format=torch.channels_last)


def test_bench_counts_bytes():
    case = bench.BenchCase("layernorm", (4, 8), "float32")
    assert case.nbytes == 4 * 8 * 4
    # per-round seconds: the layer takes 1 ms every round, the copy 0.5 ms then 2 ms then 1 ms
    rows = bench._rows(case, ["numpy"], {"numpy": {"forward": [1e-3] * 3, "backward": [1e-3] * 3}},
                       copy_rounds=[0.5e-3, 2e-3, 1e-3])
    fwd, bwd = rows
    assert fwd.gbs == pytest.approx(2 * case.nbytes / 1e-3 / 1e9)
    assert bwd.gbs == pytest.approx(3 * case.nbytes / 1e-3 / 1e9)
    assert fwd.repeats == 3
    # "of copy" is the median of per-round ratios: copy/layer = 0.5, 2, 1 -> 1 (x 3/2 backward)
    assert fwd.copy_fraction == pytest.approx(1.0) and bwd.copy_fraction == pytest.approx(1.5)


def test_bench_ratios_are_per_round():
    """A drift that slows every column in a round does not change the ratios."""
    case = bench.BenchCase("rmsnorm", (4, 8), "float32")
    slow = [1.0, 3.0, 2.0]  # the machine's speed in each round
    timings = {"numpy": {"forward": [10e-3 * f for f in slow], "backward": [30e-3 * f for f in slow]},
               "torch": {"forward": [4e-3 * f for f in slow], "backward": [6e-3 * f for f in slow]},
               "fast": {"forward": [2e-3 * f for f in slow], "backward": [3e-3 * f for f in slow]}}
    rows = bench._rows(case, ["numpy", "fast", "torch"], timings,
                       copy_rounds=[1e-3 * f for f in slow])
    fast = {r.pass_: r for r in rows if r.backend == "fast"}
    assert fast["forward"].speedup_torch == pytest.approx(2.0)
    assert fast["forward"].speedup_reference == pytest.approx(5.0)
    assert fast["backward"].speedup_torch == pytest.approx(2.0)
    assert fast["forward"].copy_fraction == pytest.approx(0.5)
    assert fast["forward"].ms == pytest.approx(4.0)  # the median round: 2 ms x 2


def test_bench_reference_timed_alone_uses_medians():
    """The reference is timed in rounds of its own (fewer of them): ratio of medians."""
    case = bench.BenchCase("rmsnorm", (4, 8), "float32")
    timings = {"numpy": {"forward": [40e-3, 20e-3], "backward": [60e-3, 60e-3]},
               "fast": {"forward": [2e-3, 6e-3, 4e-3], "backward": [3e-3, 3e-3, 3e-3]}}
    rows = bench._rows(case, ["numpy", "fast"], timings, copy_rounds=[1e-3, 3e-3, 2e-3])
    by = {(r.backend, r.pass_): r for r in rows}
    assert by[("fast", "forward")].speedup_reference == pytest.approx(30 / 4)
    assert by[("numpy", "forward")].copy_fraction == pytest.approx(2 / 30)
    assert by[("fast", "forward")].copy_fraction == pytest.approx(0.5)


def test_python_dash_m_and_no_command():
    proc = run_cli("--version")
    assert proc.returncode == 0 and normcore.__version__ in proc.stdout
    proc = run_cli()
    assert proc.returncode == 2 and "info" in proc.stdout


def test_plain_output_without_rich():
    """With rich unimportable the CLI still works, one line per item, no progress bar."""
    code = ("import sys; sys.modules['rich'] = None\n"
            "from normcore import cli\n"
            "sys.exit(cli.main(['verify', '--backend', 'numpy', '--quick']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("[1/") for line in lines)
    assert " passed, 0 failed, " in lines[-1]


def test_normcore_log_debug_names_backend_and_reason():
    code = ("import numpy as np, normcore\n"
            "ln = normcore.LayerNorm(4, backend='numpy')\n"
            "ln.backward(ln(np.ones((2, 4), np.float32)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, NORMCORE_LOG="debug"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "LayerNorm forward on backend 'numpy' (chosen at construction: argument)" in err
    assert "LayerNorm backward on backend 'numpy'" in err
    assert "group_normalize ran on backend 'numpy'" in err


def test_normcore_log_unset_adds_no_handler():
    code = ("import logging, normcore\n"
            "print(len(logging.getLogger('normcore').handlers), len(logging.getLogger().handlers))")
    env = {k: v for k, v in os.environ.items() if k != "NORMCORE_LOG"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.stdout.split() == ["0", "0"]


def test_module_logs_construction_reason(caplog):
    import logging

    with caplog.at_level(logging.DEBUG, logger="normcore"), normcore.use_backend("numpy"):
        layer = normcore.RMSNorm(4)
    with caplog.at_level(logging.DEBUG, logger="normcore"):
        layer(np.ones((2, 4), np.float32))
    assert "RMSNorm forward on backend 'numpy' (chosen at construction: use_backend() context)" \
        in caplog.text


def test_bench_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    code = cli.main(["--plain", "bench", "--quick", "--backend", BACKEND, "--layer", "rmsnorm",
                     "--repeat", "1", "--no-torch", "--plot", str(path)])
    assert code == 0 and path.stat().st_size > 0


# ---------------------------------------------------------------------- peers, --gpu, --check
@pytest.mark.parametrize("peer", ["onnxruntime", "jax"])
def test_bench_peer_column_from_its_own_process(peer):
    """One tiny case through the peer's process: its rows, the ratios beside normcore's, and its
    forward equal to the reference's (the peer computes the same thing)."""
    from normcore import bench_peers

    if bench_peers.unavailable(peer):
        pytest.skip(bench_peers.unavailable(peer))
    cases = bench.default_cases(["layernorm"], quick=True)
    report = bench.run(cases, [BACKEND], repeat=2, use_torch=False, peers=[peer])
    rows = {(r.backend, r.pass_): r for r in report.rows}
    assert rows[(peer, "forward")].ms > 0 and not rows[(peer, "forward")].error
    assert ((peer, "backward") in rows) == (peer == "jax")  # ONNX Runtime: inference only
    assert rows[(BACKEND, "forward")].speedup_peers[peer] > 0
    assert bench_peers.NOTES[peer] in report.notes
    err = report.peer_max_abs_err[peer][cases[0].label]
    assert 0 <= err < 1e-4
    assert not any("differs" in n for n in report.notes)


@pytest.mark.parametrize("peer", ["onnxruntime", "jax"])
def test_bench_peer_process_json(peer):
    """The peer process's messages: timings per pass, nothing where the peer has no counterpart
    (training-mode BatchNorm in ONNX Runtime), and the forward checked against the reference."""
    from normcore import bench_peers

    if bench_peers.unavailable(peer):
        pytest.skip(bench_peers.unavailable(peer))
    cases = [bench.BenchCase("batchnorm2d-nhwc", (2, 4, 3, 3)),
             bench.BenchCase("groupnorm", (2, 64, 2, 2), "float64")]
    seen: list[str] = []
    msgs = bench_peers.measure(peer, cases, threads=1, repeat=2, progress=seen.append)
    assert len(seen) == len(cases) and all(peer in s for s in seen)
    assert all("error" not in m for m in msgs), msgs
    if peer == "onnxruntime":  # no training BatchNorm, no NHWC
        assert msgs[0]["timings"] == {}
        assert list(msgs[1]["timings"]) == ["forward"]
    else:
        assert all(set(m["timings"]) == {"forward", "backward"} for m in msgs)
    for m in msgs:
        if m["timings"]:
            assert all(len(r) >= 2 and min(r) > 0 for r in m["timings"].values())
            assert m["max_abs_err"] < 1e-4
    assert msgs[1]["max_abs_err"] < 1e-10  # float64 statistics in float64


def test_bench_missing_peer_is_a_note(monkeypatch, capsys):
    from normcore import bench_peers

    monkeypatch.setattr(bench_peers, "unavailable", lambda peer: "not installed (test)")
    code = cli.main(["--plain", "bench", "--quick", "--backend", BACKEND, "--layer", "rmsnorm",
                     "--repeat", "2", "--no-torch", "--peers"])
    assert code == 0
    out = capsys.readouterr().out
    assert "note: onnxruntime column left out: not installed (test)" in out
    assert "note: jax column left out: not installed (test)" in out
    assert "vs ort" not in out and "vs jax" not in out


def test_bench_gpu_refusals(capsys):
    assert cli.main(["--plain", "bench", "--gpu", "--peers"]) == 2
    assert "--peers times CPU peers" in capsys.readouterr().out
    assert cli.main(["--plain", "bench", "--gpu", "--layer", "groupnorm"]) == 2
    assert "has no GPU shapes" in capsys.readouterr().out
    code = cli.main(["--plain", "bench", "--gpu", "--quick", "--backend", BACKEND])
    assert code == 2
    out = capsys.readouterr().out
    assert "error: --gpu:" in out  # no CuPy here, or numpy is a CPU backend


def test_bench_check_gate(capsys):
    """--check RATIO: the geometric mean over forward and backward of each gated backend."""
    from normcore import _bench_render

    def row(backend, pass_, vs_torch):
        return bench.BenchRow("LayerNorm", (4, 4), "float32", backend, pass_, ms=1.0,
                              speedup_torch=vs_torch)

    report = bench.BenchReport(rows=[row("numpy", "forward", 0.01), row("fast", "forward", 2.0),
                                     row("fast", "backward", 0.5), row("torch", "forward", 1.0)])
    assert bench.summary(report)["fast"] == {"vs torch forward": 2.0, "vs torch backward": 0.5,
                                             "vs torch all": pytest.approx(1.0)}
    out = cli._Out(plain=True)
    assert _bench_render.check(report, out, 0.99) == 0  # the reference and torch are not gated
    assert _bench_render.check(report, out, 1.01) == 1
    text = capsys.readouterr().out
    assert "check passed: fast is 1.00x torch" in text and "check FAILED: fast is 1.00x" in text
    assert _bench_render.check(report, out, None) == 0


def test_bench_check_from_the_command_line(capsys):
    code = cli.main(["--plain", "bench", "--quick", "--backend", "example", "--layer", "rmsnorm",
                     "--repeat", "2", "--no-torch", "--check", "1.0"])
    assert code == 1  # nothing to compare with is a failed gate, not a pass
    out = capsys.readouterr().out
    assert "check: example has no torch ratio to check" in out
    assert "geometric mean, example: vs reference" in out
