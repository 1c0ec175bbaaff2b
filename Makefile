# Quick start: `make demo` sets everything up and runs the built-in demo; `make test` runs the tests.
# Both are idempotent: the virtual environment is (re)built only when pyproject.toml changes.
# `make test-robot38` runs the robot-side tests under Python 3.8 with the robot's install (.ci/robot38).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON38 ?= python3.8
VENV38 ?= .venv38
STAMP38 := $(VENV38)/.installed

.PHONY: setup demo test test-robot38 lint clean

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

# The robot's Python with what the robot has besides our package (JetPack's Paddle and OpenCV stand-ins)
# and the test tools; .ci/robot38 installs the package itself with its runtime extras on every run.
$(STAMP38): pyproject.toml
	@$(PYTHON38) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 8) else "error: $(PYTHON38) is not Python 3.8 (set PYTHON38=...)")'
	$(PYTHON38) -m venv $(VENV38)
	$(VENV38)/bin/python -m pip install --quiet --upgrade pip
	$(VENV38)/bin/python -m pip install --quiet paddlepaddle==2.6.2 opencv-python-headless==4.6.0.66 pytest pytest-timeout pycocotools
	touch $(STAMP38)

test-robot38: $(STAMP38)
	.ci/robot38 $(VENV38)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/vermin --target=3.8- --no-tips --violations edge_cli edge_sdk device calibration
	$(BIN)/hadolint jetson.Dockerfile

clean:
	rm -rf $(VENV) $(VENV38) demo-out .pytest_cache
