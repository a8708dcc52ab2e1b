# Two commands on a fresh machine: `make demo` and `make test`. Both create/reuse .venv.
PYTHON ?= python3
VENV ?= .venv
# PyTorch is installed first and pinned: an unpinned torch can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.monetpipe-installed
# Holds the TORCH_SPEC that .venv was installed with; rewritten (so the install runs again and pip puts in
# that torch) only when TORCH_SPEC differs from it.
TORCH_STAMP := $(VENV)/.torch-spec
DEMO_DIR ?= monet_data
export MONET_raw ?= $(abspath $(DEMO_DIR))/raw
export MONET_preprocessed ?= $(abspath $(DEMO_DIR))/preprocessed
export MONET_results ?= $(abspath $(DEMO_DIR))/results

.PHONY: install demo lint test test-all clean-demo FORCE

install: $(STAMP)

$(TORCH_STAMP): FORCE
	@mkdir -p $(VENV)
	@test "$$(cat $@ 2>/dev/null)" = '$(TORCH_SPEC)' || { echo '$(TORCH_SPEC)' > $@; echo "torch: installing $(TORCH_SPEC)"; }

$(STAMP): setup.py pyproject.toml $(TORCH_STAMP)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,federated]"
	touch $@

# scripts/demo.sh holds the commands and the budget (DEMO_EPOCHS, DEMO_BATCH, DEMO_MODELS, ...: pass them
# to make, e.g. `make demo DEMO_EPOCHS=10`); tests/test_demo.py runs the same script on a smaller budget.
demo: $(STAMP)
	BIN=$(VENV)/bin DEMO_DIR=$(abspath $(DEMO_DIR)) bash scripts/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO_DIR)
