# Quick start: `make demo` sets everything up and runs the built-in demo; `make test` runs the tests.
# Both are idempotent: the virtual environment is (re)built only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else "edge-sdk needs Python >= 3.8")'
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { echo "error: $(PYTHON) has no venv module (Debian/Ubuntu: apt-get install python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[workstation,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edge-sdk demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/vermin --target=3.8- --no-tips --violations edge_cli edge_sdk device calibration
	$(BIN)/hadolint jetson.Dockerfile

clean:
	rm -rf $(VENV) demo-out .pytest_cache
