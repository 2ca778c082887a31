# slimkit developer commands. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench weights clean help

help:
	@echo "make demo       install, then run slimkit on the bundled model (MLflow run in ./mlflow.db)"
	@echo "make test       install, then run the whole test suite (slow tests included)"
	@echo "make test-fast  the suite without tests marked slow"
	@echo "make lint       ruff"
	@echo "make bench      benchmarks -> docs/BENCHMARKS.md"
	@echo "make weights    retrain the bundled models' weights"

# torch is pinned to the local CPU wheel and installed first: an unpinned torch pulls CUDA builds.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/slimkit

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/sparsity.py
	$(PY) benchmarks/quantization.py

weights: $(STAMP)
	$(PY) -m slimkit.plugins.torch.train digits_cnn
	$(PY) -m slimkit.plugins.torch.train digits_resnet

clean:
	rm -rf outputs multirun .slimkit .pytest_cache
