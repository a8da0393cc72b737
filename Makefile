# attnprobe — set-up and checks. `make demo` and `make test` work on a fresh machine: they create
# .venv, install the pinned torch first, then the package with its extras.
# - TORCH_SPEC (demo, library): torch==2.13.0, the CPU build that pip finds on disk on these
#   machines.
# - TORCH_DEV_SPEC (tests): timm needs torchvision, and PyPI's torchvision does not load beside
#   that CPU build, so the test environment takes the matching pair torch 2.14.1 /
#   torchvision 0.29.1 (also on disk here; a CUDA build, which runs on the CPU).
# Override either for another build, e.g. `make test TORCH_DEV_SPEC="torch torchvision"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_DEV_SPEC ?= torch==2.14.1 torchvision==0.29.1
# `make demo DEMO_ARGS=--quick` for the 20-second smoke run of the example
DEMO_ARGS ?=
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install install-dev demo test lint typecheck unit notebooks docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install $(TORCH_DEV_SPEC)
	$(PIP) install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/attnprobe example rollingq $(DEMO_ARGS)

lint: install-dev
	$(BIN)/ruff check attnprobe tests benchmarks examples docs/scripts conftest.py
	$(BIN)/ruff format --check attnprobe tests benchmarks examples docs/scripts conftest.py

typecheck: install-dev
	$(BIN)/mypy

unit: install-dev
	$(BIN)/pytest -n 2 -p no:cacheprovider

notebooks: install-dev
	$(BIN)/pytest -p no:cacheprovider --nbmake notebooks -o addopts="" -o testpaths=""

docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(VENV)/site

test: lint typecheck unit notebooks docs

bench: install-dev
	$(BIN)/python benchmarks/op_count.py
	$(BIN)/python benchmarks/probe_overhead.py
	$(BIN)/python benchmarks/hf_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
