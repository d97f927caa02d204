# labkit — the two commands of the README, and the tools around them.
# The interpreter .venv is made from: the distribution's python3.11 where it can make a venv (built with
# PGO and LTO; ~9 % less CPU than pyenv's default build here), else python3.11 on PATH (tools/python311).
PYTHON ?= $(shell tools/python311)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: demo test lint format bench install clean system-deps

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	@echo "creating $(VENV) from $(PYTHON) ($$($(PYTHON) --version 2>&1))"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# gbstats (GrowthBook's engine, a test-only peer) pins numpy<2 and pandas<2 although its code runs on
	@# both: installed without its pins, so tests/stats compare against it instead of skipping.
	$(BIN)/python -m pip install --quiet --no-deps 'gbstats==0.8.0'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/labkit demo

# PostgreSQL, a JRE and Chromium for the tests that use them: installed when missing (root or
# passwordless sudo), else one line says what to install (tools/system-deps).
system-deps:
	@tools/system-deps

# The suite in parallel (pytest-xdist): each test module is one unit on one worker, the demo lab's
# readers one unit (tests/conftest.py). Most tests wait on kernels, servers and subprocesses, so more
# workers than cores pays; TEST_WORKERS=0 runs it in this process, as `python -m pytest` alone does.
# PYTHONDONTWRITEBYTECODE (CI sandboxes set it) would make every process of the suite — each worker's
# collection, each kernel, each labkit command in a new interpreter — compile labkit and rewrite the tests
# from source, as an installed labkit never does (~4 CPU-s per worker): the suite writes its bytecode
# (into the git-ignored __pycache__ folders beside the sources), as Python does by default.
TEST_WORKERS ?= 4
test: system-deps $(STAMP)
	$(BIN)/ruff check labkit tests benchmarks
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check labkit tests benchmarks
	$(BIN)/ruff format --check labkit tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format labkit tests benchmarks
	$(BIN)/ruff check --fix labkit tests benchmarks

# The benchmark suite (benchmarks/README.md); e.g. make bench BENCH="--quick analysis assign"
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH)

clean:
	rm -rf $(VENV) results/*/ build *.egg-info
