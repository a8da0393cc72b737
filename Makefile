# attnprobe — set-up and checks. `make demo` and `make test` work on a fresh machine: each creates
# .venv, installs torch first, then the package (with the dev extras for `make test`).
#
# Which torch. pip would pick a torch build for you through the package's dependency, so the
# Makefile installs one first, from TORCH_SPEC, and the same one for the demo and the tests: one
# torch per venv, never replaced. timm (a test dependency) needs torchvision, which only loads
# beside the torch it was built for, so TORCH_SPEC pins the pair.
# - Default: the CPU build. TORCH_INDEX names PyTorch's CPU wheel index, which pip searches
#   besides PyPI; its `+cpu` wheels win over PyPI's. A machine that cannot reach that index
#   (pip warns and retries a few seconds) gets PyPI's wheel: on Linux x86-64 that is the CUDA 12
#   build (about 3 GB with its NVIDIA libraries), which runs on the CPU too.
# - A CUDA build: `make demo TORCH_INDEX=https://download.pytorch.org/whl/cu128` (pick the CUDA
#   version your driver supports), or `TORCH_INDEX=` for PyPI's default build.
# - Another torch: `make test TORCH_SPEC="torch==2.7.1 torchvision==0.22.1"` (a matching pair).
# - An existing .venv keeps its torch; `make clean` first to switch.
# Supported versions (declared in pyproject.toml): `make test-oldest` runs the tests of torch and
# transformers APIs on the lowest supported pair in .venv-oldest; `make test-newest` runs them on
# the newest, which is what .venv (and so `make unit`) holds.
PYTHON ?= python3
VENV ?= .venv
# the two ends of the supported range; the newest is also what .venv holds by default
OLDEST_SPEC ?= torch==2.7.1 torchvision==0.22.1 transformers==5.23.0
NEWEST_SPEC ?= torch==2.14.1 torchvision==0.29.1 transformers==5.24.0
TORCH_SPEC ?= $(filter torch%,$(NEWEST_SPEC))
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# the transformers the dev environment tests with
TRANSFORMERS_SPEC ?= $(filter transformers%,$(NEWEST_SPEC))
# the torch beside which `make wheel-test` installs the wheel: a supported torch other than
# TORCH_SPEC's (torch 2.13.0's CPU build installs in seconds on the project's machines)
WHEEL_TORCH ?= torch==2.13.0
# `make demo DEMO_ARGS=--quick` for the 20-second smoke run of the example
DEMO_ARGS ?=
DEMO_DIR ?= attnprobe-runs/rollingq-synthetic
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
TORCH_INSTALL = $(PIP) install $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
# the tests whose subject is a torch or transformers API (capture, kernels, models, frameworks);
# the version targets run these, the full suite runs in `make unit`
VERSION_TESTS := tests/test_probe.py tests/test_hand_attention.py tests/test_functional.py \
	tests/test_fused.py tests/test_stats.py tests/test_cross_attention.py tests/test_streams.py \
	tests/test_hf.py tests/test_hf_sequences.py tests/test_rollingq.py tests/test_reliability.py \
	tests/test_models.py tests/test_models_multistream.py tests/test_callbacks.py \
	tests/test_training.py tests/test_lightning.py tests/test_hf_trainer.py tests/test_fsdp.py \
	tests/test_package.py

.PHONY: install install-dev demo test lint typecheck unit notebooks docs dist wheel-test \
	test-oldest test-newest _versions bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(TORCH_INSTALL) $(TORCH_SPEC)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install -e ".[dev]" "$(TRANSFORMERS_SPEC)"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/attnprobe example rollingq $(DEMO_ARGS)
	@echo
	@echo "Look at the results (the folder named above; $(DEMO_DIR) by default):"
	@echo "  summary.md in any Markdown viewer, figures/*.png in an image viewer, *.csv with pandas;"
	@echo "  in Jupyter: notebooks/03_rollingq_example.ipynb (make install-dev installs Jupyter)."
	@echo "The command is $(BIN)/attnprobe (source $(BIN)/activate puts it on your PATH)."

lint: install-dev
	$(BIN)/ruff check attnprobe tests benchmarks examples docs/scripts docs/hooks conftest.py
	$(BIN)/ruff format --check attnprobe tests benchmarks examples docs/scripts docs/hooks conftest.py

typecheck: install-dev
	$(BIN)/mypy

unit: install-dev
	$(BIN)/pytest -n 2 -p no:cacheprovider

notebooks: install-dev
	$(BIN)/pytest -p no:cacheprovider --nbmake notebooks -o addopts="" -o testpaths=""

docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(VENV)/site
	ATTNPROBE_SITE_DIR=$(VENV)/site $(BIN)/pytest -p no:cacheprovider -q tests/test_site.py

# the wheel and the sdist, into dist/
dist: install-dev
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

# builds the wheel and the sdist, installs the wheel into a fresh venv beside WHEEL_TORCH (another
# supported torch than the dev venv's) and runs the README's example there, outside the checkout
# (tests/test_install.py)
wheel-test: install-dev
	ATTNPROBE_INSTALL_TEST=1 TORCH_SPEC="$(WHEEL_TORCH)" TORCH_INDEX="$(TORCH_INDEX)" \
		$(BIN)/pytest -p no:cacheprovider -q tests/test_install.py

test: lint typecheck unit notebooks docs wheel-test test-oldest

# the lowest supported torch and transformers, in their own venv
test-oldest:
	$(MAKE) --no-print-directory VENV=$(VENV)-oldest TORCH_SPEC="$(filter torch%,$(OLDEST_SPEC))" \
		TRANSFORMERS_SPEC="$(filter transformers%,$(OLDEST_SPEC))" _versions

# the newest supported torch and transformers: the dev venv's default pins (TORCH_SPEC and
# TRANSFORMERS_SPEC come from NEWEST_SPEC), so this is `make unit`'s environment, checked to hold
# those versions
test-newest:
	$(MAKE) --no-print-directory TORCH_SPEC="$(filter torch%,$(NEWEST_SPEC))" \
		TRANSFORMERS_SPEC="$(filter transformers%,$(NEWEST_SPEC))" _versions

_versions: install-dev
	$(BIN)/python tests/_versions.py $(TORCH_SPEC) $(TRANSFORMERS_SPEC)
	$(BIN)/pytest -n 2 -p no:cacheprovider -o testpaths="" $(VERSION_TESTS)

bench: install-dev
	$(BIN)/python benchmarks/op_count.py
	$(BIN)/python benchmarks/probe_overhead.py
	$(BIN)/python benchmarks/hf_overhead.py

clean:
	rm -rf $(VENV) $(VENV)-oldest dist build .pytest_cache .mypy_cache .ruff_cache
