# tritonctl: `make demo` runs the main job on the embedded default; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

PIP := -m pip install -q --disable-pip-version-check
LOCK := requirements.lock

.PHONY: setup demo test test-fast lint lock clean wheel

setup: $(STAMP)

# Every version comes from requirements.lock (pip constraints): a fresh clone installs what the tests ran with.
# torch/torchvision there are the builds on this machine's disk; unpinned, pip would fetch a CUDA build of several GB.
$(STAMP): pyproject.toml $(LOCK) requirements-tracking.txt scripts/setup_tools.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) -c $(LOCK) -e ".[export,local,events,dev]"
	$(PY) $(PIP) --no-deps -r requirements-tracking.txt
	bash scripts/setup_tools.sh $(VENV)
	$(PY) -c "from tritonctl.serving.runtime import find_local_runtime; print('local Triton:', find_local_runtime().binary)"
	touch $(STAMP)

demo: setup
	$(PY) scripts/demo.py

# The tests also need Debian packages (an RTSP server, headless Chromium): scripts/setup_system.sh installs them (root).
test: setup
	bash scripts/setup_system.sh
	$(PY) -m pytest -q

test-fast: setup
	bash scripts/setup_system.sh
	$(PY) -m pytest -q -m "not slow and not server"

lint: setup
	$(VENV)/bin/ruff check tritonctl tests scripts benchmarks
	$(VENV)/bin/mypy tritonctl

# Refresh requirements.lock: resolve pyproject's ranges afresh in a clean venv, install, freeze. Review the diff,
# then `make test` before committing it.
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python $(PIP) "torch==2.14.1" "torchvision==0.29.1" ".[export,local,events,dev]"
	{ echo "# requirements.lock: every package of \`make setup\` (extras export, local, events, dev), pinned. Refresh: make lock"; \
	  build/lock-venv/bin/python -m pip freeze --exclude tritonctl; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK) && rm -rf build/lock-venv

# A wheel to install elsewhere (tritonctl is not on PyPI yet): pip install 'dist/tritonctl-<version>-py3-none-any.whl[local]'
DIST ?= dist
wheel:
	$(PYTHON) -m pip wheel -q --no-deps --disable-pip-version-check -w $(DIST) .

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
