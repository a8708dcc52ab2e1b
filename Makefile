# Two commands on a fresh machine: `make demo` and `make test`. Both create/reuse .venv.
PYTHON ?= python3
VENV ?= .venv
# PyTorch is installed first and pinned: an unpinned torch can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.monetpipe-installed
DEMO_DIR ?= monet_data
export MONET_raw ?= $(CURDIR)/$(DEMO_DIR)/raw
export MONET_preprocessed ?= $(CURDIR)/$(DEMO_DIR)/preprocessed
export MONET_results ?= $(CURDIR)/$(DEMO_DIR)/results

.PHONY: install demo test test-all clean-demo

install: $(STAMP)

$(STAMP): setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,federated]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/monet_synthetic_task -o $(MONET_raw) --kind ct
	$(VENV)/bin/monet_plan_and_preprocess -t 901 -np 2
	$(VENV)/bin/monet_train -t 901 -m monet --epochs 8 --iters-per-epoch 40 --batch-size 8 --continue
	for m in unet16 unet64 attention_unet; do \
	  $(VENV)/bin/monet_train -t 901 -m $$m --epochs 1 --iters-per-epoch 3 --batch-size 4 --continue || exit 1; done
	$(VENV)/bin/monet_predict -i $(MONET_raw)/Task901_SyntheticCT/imagesTs -o $(DEMO_DIR)/predictions/Task901_SyntheticCT/monet -t 901 -m monet
	$(VENV)/bin/monet_evaluate -t 901

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO_DIR)
