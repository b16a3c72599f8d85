# tritonctl: `make demo` runs the main job on the embedded default; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

# torch/torchvision are pinned to the builds on this machine's disk; unpinned, pip would fetch a CUDA build of several GB.
$(STAMP): pyproject.toml scripts/setup_tools.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[local,dev]"
	bash scripts/setup_tools.sh $(VENV)
	$(PY) -c "from tritonctl.runtime import find_local_runtime; print('local Triton:', find_local_runtime().binary)"
	touch $(STAMP)

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not server"

lint: setup
	$(VENV)/bin/ruff check tritonctl tests scripts benchmarks
	$(VENV)/bin/mypy tritonctl

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
