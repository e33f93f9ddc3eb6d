# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv from nothing when it is missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.omni_mega_installed
BUILT  := $(VENV)/.omni_mega_built
# The extension's inputs: `make build` recompiles only when one of them is newer than the last build.
EXT_SOURCES := setup.py $(shell find csrc -type f 2>/dev/null)
# Keep CI's 2 cores busy but not oversubscribed.
export MAX_JOBS ?= 2

.PHONY: demo test build venv cuda-check bench clean

$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || { command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or PYTHON=...)"; exit 1; }; $(PYTHON) -m venv $(VENV); }
	$(PIP) install --quiet --upgrade pip setuptools wheel
	# torch (+ pybind11) first: the extensions build against exactly these (CPU wheel here, CUDA wheel on a cluster).
	$(PIP) install --quiet torch==2.13.0 numpy==2.4.6 pybind11==3.1.0
	$(PIP) install --quiet -e ".[test,plot]" --no-build-isolation
	@touch $(STAMP) && touch $(BUILT)

venv: $(STAMP)

# Incremental rebuild of the extension after editing csrc/ (ninja only recompiles what changed).
$(BUILT): $(STAMP) $(EXT_SOURCES)
	flock build.lock $(PY) setup.py --quiet build_ext --inplace
	@touch $(BUILT)

build: $(BUILT)

cuda-check: $(STAMP)
	@bash scripts/check_cuda.sh

test: build cuda-check
	$(PY) -m pytest -q --durations=20 tests

demo: build
	$(VENV)/bin/omni-mega demo --run-dir runs/demo --resume auto
	$(VENV)/bin/omni-mega report runs/demo

bench: build
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build *.egg-info omni_mega/*.so
