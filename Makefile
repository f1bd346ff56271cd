# Each target creates .venv and installs what it needs; the CPU torch wheel is pinned (see pyproject extras).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
BUNDLE := .cache/bundle-default
MODEL := graphs/default_model

.PHONY: run test bench lint clean demo

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -U pip setuptools wheel

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[export,cpu]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev,export,cpu,quant,serve,ray,demo]'
	$(PIP) install --no-deps nvidia-modelopt==0.47.0
	touch $@ $(VENV)/.installed-run $(VENV)/.installed-demo

$(VENV)/.installed-demo: pyproject.toml | $(VENV)/.installed-run
	$(PIP) install -e '.[export,cpu,demo]'
	touch $@

# The main job: export the bundled BLT-D to a validated ONNX bundle (FP32, INT8 Q/DQ for TensorRT, INT8
# dynamic for CPU; rebuilt when the model or the export code changes), then generate greedily in all four
# modes with ONNX Runtime and print one table per precision.
$(BUNDLE)/manifest.json: $(MODEL)/model.safetensors $(MODEL)/config.json $(wildcard graphs/*.py graphs/incremental/*.py export/*.py) \
		| $(VENV)/.installed-run
	$(BIN)/blt-export build --out $(BUNDLE) --precision fp32,int8,int8-dynamic

run: $(VENV)/.installed-run $(BUNDLE)/manifest.json
	$(BIN)/blt-run compare --bundle $(BUNDLE) --precision fp32
	$(BIN)/blt-run compare --bundle $(BUNDLE) --precision int8
	$(BIN)/blt-run compare --bundle $(BUNDLE) --precision int8-dynamic

# The Gradio demo (blt-demo) on the default bundle with ONNX Runtime: http://127.0.0.1:7860
demo: $(VENV)/.installed-demo $(BUNDLE)/manifest.json
	$(BIN)/blt-demo --bundle $(BUNDLE) --backend ort

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The default benchmark set (graphs, decode, quality, paper, HF anchor): Markdown on stdout, then
# benchmarks/results/bench.{json,md} and bench/*.png; `blt-bench report` renders a saved run again.
bench: $(VENV)/.installed-dev $(BUNDLE)/manifest.json
	$(BIN)/blt-bench all --bundle $(BUNDLE) --out benchmarks/results

# The first run on a machine with an NVIDIA GPU: installs TensorRT (TRT_EXTRA=trt: CUDA 13, driver >= 580;
# TRT_EXTRA=trt-cu12 for older drivers; TRT_EXTRA= keeps the installed one, e.g. JetPack's), then builds,
# compares and runs the default bundle's fp32 and int8 engines (docs/tensorrt.md). Exit status 2: no GPU.
TRT_EXTRA ?= trt
.PHONY: gpu-check
gpu-check: $(VENV)/.installed-run $(BUNDLE)/manifest.json
	$(if $(TRT_EXTRA),$(PIP) install -e '.[$(TRT_EXTRA)]')
	$(BIN)/python -m fastblt.export.gpu_check --bundle $(BUNDLE)

# The public BLT-1B shape (random init, 4.6 B parameters) through init, build (fp32, int8-dynamic, int4), check,
# per-graph latency against read bounds and generation in the paper's settings on ONNX Runtime CPU, plus the
# projection from the trained default model; not part of CI (about 32 GB of disk under .cache/scale, up to an hour
# and ~20 GB of RAM here). Numbers: .cache/scale/scale.json; copy it to docs/benchmarks/scale-blt-1b.json and run
# `blt-bench readme --readme docs/scale.md` to regenerate docs/scale.md's tables.
.PHONY: scale-check
scale-check: $(VENV)/.installed-dev
	$(BIN)/blt-bench scale --work .cache/scale --preset blt-1b --precision fp32,int8-dynamic,int4

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .cache
