# Developer entry points.  `make setup` is all a fresh clone needs (see .ci/run).
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
# Extra pip arguments for the torch install, e.g.
#   make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=

.PHONY: setup train test bench clean

setup:
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install $(TORCH_PIP_ARGS) torch==2.13.0
	$(VPY) -m pip install -e '.[dev]'
	$(VPY) -m scripts.fetch_assets

train:
	$(VPY) ppo_training/train.py --config ppo_training/configs/ff_residual.yaml

test:
	$(VPY) -m pytest -q tests

bench:
	$(VPY) -m bench

clean:
	rm -rf runs report.html
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
