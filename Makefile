# normcore: `make run` sets up a local virtual environment and runs the benchmark;
# `make test` sets up and runs the whole test suite. Only Python 3.10+ and make are needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test lint test-cudasim bench bench-history asv-check clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[numba,dev]" "numba-cuda>=0.20"
	@# torch is only a test oracle (golden vectors are stored); its absence skips those tests.
	$(BIN)/python -m pip install -q torch==2.13.0 || echo "torch unavailable: torch-oracle tests will be skipped"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/normcore bench

bench: run

lint: setup
	$(BIN)/ruff check .

# The whole suite on every CPU backend, then the conformance suite on the numba-cuda backend
# under Numba's CUDA simulator (no GPU needed).
test: setup lint
	$(BIN)/python -m pytest -q
	$(MAKE) test-cudasim

test-cudasim: setup
	NUMBA_ENABLE_CUDASIM=1 NORMCORE_TEST_BACKEND=numba-cuda NORMCORE_TEST_QUICK=1 \
		$(BIN)/python -m pytest -q -p no:cacheprovider normcore/testing

clean:
	rm -rf $(VENV) .asv build *.egg-info
