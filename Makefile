# `make test` and `make demo` each bootstrap .venv from nothing.
# torch is installed first as torch==2.13.0 when the venv has none: that pin resolves to the CPU
# build held locally on our machines, while an unpinned torch would pull several GB of CUDA wheels.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fusion-installed

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
