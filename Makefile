# `make demo` and `make test` each create/refresh .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to a matching pair (see ../shared/ENVIRONMENT.md): PyPI's torchvision must match torch.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/swift-scale demo

test: $(STAMP)
	$(BIN)/ruff check swift_scale tests tools
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check swift_scale tests tools
	$(BIN)/ruff format --check swift_scale tests tools

# the quick speed/scale figures (minutes); the accuracy benchmarks are separate, longer commands (README "Results")
bench: $(STAMP)
	$(BIN)/python tools/bench/sampler_apply.py
	$(BIN)/python tools/bench/train_step.py
	$(BIN)/python tools/bench/feature_pass.py
	$(BIN)/python tools/bench/stream_rejection.py
	$(BIN)/python tools/bench/score_store.py

clean:
	rm -rf runs .pytest_cache
