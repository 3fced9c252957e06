# `make test` and `make demo` each bootstrap .venv from nothing, installing only what they need:
# `make demo` the `demo` extra (music21, matplotlib), `make test` the `test` extra (pytest, ruff,
# hypothesis, the oracle optimizers, diffusers, …).
# torch is installed first as torch==2.13.0 when the venv has none: that pin resolves to the CPU
# build held locally on our machines, while an unpinned torch would pull several GB of CUDA wheels.
VENV       ?= .venv
PY         := $(VENV)/bin/python
TORCH      := $(VENV)/.fusion-torch
STAMP_DEMO := $(VENV)/.fusion-installed-demo
STAMP_TEST := $(VENV)/.fusion-installed-test

.PHONY: test demo lint bench clean

$(TORCH):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	touch $(TORCH)

$(STAMP_DEMO): pyproject.toml $(TORCH)
	$(PY) -m pip install -e ".[demo]"
	touch $(STAMP_DEMO)

$(STAMP_TEST): pyproject.toml $(TORCH)
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP_TEST)

test: $(STAMP_TEST)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: $(STAMP_DEMO)
	$(PY) examples/demo.py

lint: $(STAMP_TEST)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
