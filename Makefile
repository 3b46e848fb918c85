# Two set-up commands, each works from a clean clone and creates its own environment:
#   make demo   installs lamina and builds the atlas (out/atlas/index.html) of the built-in models
#   make test   installs lamina with its test tools, lints with ruff and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Without an NVIDIA GPU, pin the CPU build of torch; the package itself only asks for a range.
TORCH_SPEC := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo "torch>=2.2,<3"; else echo "torch==2.13.0"; fi)

.PHONY: demo test lint bench clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	touch $@

$(VENV)/.demo: $(VENV)/.base pyproject.toml
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base pyproject.toml
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.demo
	HF_HUB_OFFLINE=1 $(VENV)/bin/lamina report --model minilm --model shakespeare-char --quick --out out/atlas

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	HF_HUB_OFFLINE=1 $(PY) -m pytest

bench: $(VENV)/.dev
	$(PY) -m pip install -q -e ".[bench]"

clean:
	rm -rf $(VENV)
