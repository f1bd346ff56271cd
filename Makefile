# Each target creates .venv and installs what it needs; the CPU torch wheel is pinned (see pyproject extras).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
PROMPT ?= def fibonacci(n):

.PHONY: run test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -U pip setuptools wheel

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[torch,cpu]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev,cpu]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	@if [ -f graphs/default_model/config.json ]; then CKPT=""; else \
	  echo "no bundled default model yet: using a random tiny BLT (blt-export init)"; \
	  $(BIN)/blt-export init --out .cache/random-tiny >/dev/null; CKPT="--checkpoint .cache/random-tiny"; fi; \
	$(BIN)/blt-run generate $$CKPT --max-new-bytes 96 '$(PROMPT)'

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
