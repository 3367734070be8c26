# normcore: `make run` sets up a local virtual environment and runs the benchmark;
# `make test` sets up and runs the whole test suite. Only Python 3.10+ and make are needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test lint test-cudasim bench bench-peers bench-history asv-check clean digits

$(STAMP): pyproject.toml Makefile examples/normcore-example-backend/pyproject.toml \
		examples/normcore-broken-backend/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[numba,dev]" "numba-cuda>=0.20"
	@# The example plugin (and deliberately broken ones) install exactly as a third party's would.
	$(BIN)/python -m pip install -q --no-deps -e examples/normcore-example-backend \
		-e examples/normcore-broken-backend
	@# torch is only a test oracle (golden vectors are stored); its absence skips those tests.
	$(BIN)/python -m pip install -q torch==2.13.0 || echo "torch unavailable: torch-oracle tests will be skipped"
	@# normcore.torch (the PyTorch bridge) is tested on Hugging Face transformers' ResNet and BERT,
	@# built from small configs with random weights (transformers does not depend on torch, so
	@# the torch above stays); missing, those tests are skipped.
	$(BIN)/python -m pip install -q transformers || echo "transformers unavailable: the bridge's ResNet/BERT tests will be skipped"
	@# The array-api backends' libraries (jax from PyPI is CPU-only); each one missing only marks
	@# its backend unavailable (array-api-torch uses the torch above).
	$(BIN)/python -m pip install -q array-api-compat array-api-strict jax || echo "array-api-strict or jax unavailable: the array-api-strict and array-api-jax backends will be unavailable"
	@# `normcore bench --peers`: ONNX Runtime's column (JAX's comes from the line above); missing,
	@# the column is left out with a note and the tests of that peer are skipped.
	$(BIN)/python -m pip install -q onnx onnxruntime || echo "onnx or onnxruntime unavailable: normcore bench --peers will have no ONNX Runtime column"
	@# SyncBatchNorm over MPI (mpi4py and the MPICH library, both wheels); missing, the tests
	@# that launch mpiexec are skipped.
	$(BIN)/python -m pip install -q "mpi4py>=4" mpich || echo "mpi4py or mpich unavailable: the SyncBatchNorm tests under mpiexec will be skipped"
	@# The training example (examples/train_digits.py: scikit-learn's bundled digits, a PNG plot);
	@# missing, `make digits` fails and tests/test_train_digits.py is skipped.
	$(BIN)/python -m pip install -q scikit-learn matplotlib || echo "scikit-learn or matplotlib unavailable: the training example's tests will be skipped"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/normcore bench

# normcore against what a user would pick instead: torch, ONNX Runtime and JAX columns.
bench-peers: setup
	$(BIN)/normcore bench --peers

bench: run

# The training example: NumPy + normcore on sklearn's digits, with its torch twin's curve.
digits: setup
	$(BIN)/python examples/train_digits.py --plot digits.png --twin

lint: setup
	$(BIN)/ruff check .

# The whole suite on every CPU backend, then the conformance suite and the edge, non-finite and
# hardening tests on the numba-cuda backend under Numba's CUDA simulator (no GPU needed), in one
# pytest-xdist worker per core, at most 4 (the simulator runs every CUDA thread as a Python
# thread: 13 -> 7 minutes on 2 cores).
# NORMCORE_NUMBA_SERIAL_MAX=0: the numba backend runs its parallel kernels even on the suite's
# small inputs (by default those run on the calling thread, through serial variants that
# tests/test_numba_serial.py proves equal bit for bit).
test: setup lint
	NORMCORE_NUMBA_SERIAL_MAX=0 $(BIN)/python -m pytest -q
	$(MAKE) asv-check
	$(MAKE) test-cudasim

test-cudasim: setup
	NUMBA_ENABLE_CUDASIM=1 NORMCORE_TEST_BACKEND=numba-cuda NORMCORE_TEST_QUICK=1 \
		$(BIN)/python -m pytest -q -n auto --maxprocesses 4 -p no:cacheprovider \
		normcore/testing tests/test_edges.py \
		tests/test_nonfinite.py tests/test_hardening.py

clean:
	rm -rf $(VENV) .asv build *.egg-info examples/*/src/*.egg-info

# ---------------------------------------------------------------- asv performance history
# `make bench-history [HISTORY_N=10]`: run the asv suite (asv_bench/) on the last HISTORY_N commits
# of main, each built in its own virtualenv under .asv/env, then publish the HTML to .asv/html
# (`cd asv_bench && ../.venv/bin/asv preview` serves it). NORMCORE_ASV_QUICK=1: quick shapes only.
HISTORY_N ?= 10
ASV := $(CURDIR)/$(BIN)/asv
ASV_CHECK_HOME := $(CURDIR)/.asv/check-home

bench-history: setup
	ASV=$(ASV) asv_bench/history.sh $(HISTORY_N)

# CI: the benchmark suite imports and every benchmark runs once on the quick shapes, in this venv
# (--python=same: nothing built, no network). asv run exits 2 when a benchmark fails; skipped cases
# (no GPU) are fine. Machine info is generated non-interactively in a throw-away HOME. The check
# forks its benchmark processes from a server that imported the suite (--launch-method
# forkserver: 5 -> 2 minutes on 2 cores, the same cases and results); asv.conf.json keeps spawn,
# fresh interpreters, for the timed history runs (CUDA does not survive a fork of a process that
# initialised it).
# ASV_CHECK_BENCH selects the float32 cases (and the start-up benchmarks) of the backends of NumPy
# arrays and the GPU one (the array-api backends of torch, JAX and array-api-strict are timed by
# `normcore bench`), to keep the pass short on 2 cores; `make asv-check ASV_CHECK_BENCH=` runs all.
ASV_CHECK_BENCH ?= -b "^(?!.*'array-api-).*'float32'\)$$" -b "^bench_startup\."
asv-check: setup
	mkdir -p $(ASV_CHECK_HOME)
	cd asv_bench && HOME=$(ASV_CHECK_HOME) $(ASV) machine --yes > /dev/null
	cd asv_bench && HOME=$(ASV_CHECK_HOME) $(ASV) check --python=same
	cd asv_bench && HOME=$(ASV_CHECK_HOME) NORMCORE_ASV_QUICK=1 \
		$(ASV) run --python=same --quick --dry-run --show-stderr \
		--launch-method forkserver $(ASV_CHECK_BENCH)
