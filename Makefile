# `make demo` and `make test` each create/refresh .venv and install exactly the versions in requirements.lock
# (the set CI passed with); `make lock` re-resolves pyproject.toml's ranges and rewrites the lock.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
PIP_PIN := pip==26.3
# torch/torchvision must be a matching pair (PyPI's torchvision is built against one torch); the lock holds both
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench lock clean

$(STAMP): pyproject.toml $(LOCK) Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(PIP_PIN)
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[dev]'
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/swift-scale demo

# one worker per core, each test file on one worker (its module fixtures are built once)
test: $(STAMP)
	$(BIN)/ruff check swift_scale tests tools
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadfile tests

lint: $(STAMP)
	$(BIN)/ruff check swift_scale tests tools
	$(BIN)/mypy swift_scale

typecheck: $(STAMP)
	$(BIN)/mypy swift_scale

# the quick speed/scale figures (minutes); the accuracy benchmarks are separate, longer commands (README "Results")
bench: $(STAMP)
	$(BIN)/python tools/bench/sampler_apply.py
	$(BIN)/python tools/bench/train_step.py
	$(BIN)/python tools/bench/feature_pass.py
	$(BIN)/python tools/bench/stream_rejection.py
	$(BIN)/python tools/bench/score_store.py

lock:
	rm -rf .venv-lock && $(PY) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q $(PIP_PIN)
	.venv-lock/bin/python -m pip install -q $(TORCH_PIN) -e '.[dev]'
	.venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^-e' > $(LOCK)
	rm -rf .venv-lock

clean:
	rm -rf runs .pytest_cache
