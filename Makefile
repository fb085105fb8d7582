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

.PHONY: help setup fetch train quantize onnx engines torchscript repository serve up down status rollout rollback \
        probe drill classify \
        benchmark perf load overload experiments demo test test-fast lock clean gpu-report onnx-request-changed \
        monitor dashboard capacity

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

# Prometheus (make monitor, the rule tests): Debian's package unpacked into .tools/prometheus, or
# the prometheus/promtool already on PATH
.tools/.prometheus-installed: .triton/.installed
	@echo "==> [setup] Prometheus + promtool"
	$(PY) -m server install --no-perf-analyzer
	@mkdir -p .tools && touch $@

setup: $(VENV)/.installed .triton/.installed .tools/.prometheus-installed ## venv, embedded Triton, perf_analyzer, Prometheus

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
TS_DIR     := $(BUILD_DIR)/torchscript
QUANT_ARGS ?= --calib-texts $(CALIB) --sensitivity-texts $(SENS)
PRECISIONS ?= fp32,int8,int8dyn
ONNX_ARGS  ?=
ENGINE_ARGS ?=

$(QUANT_DIR)/quantize.json: $(CHECKPOINT)/model.safetensors
	@echo "==> [quantize] INT8 QAT with modelopt ($(CALIB) calibration, $(SENS) sensitivity texts)"
	$(PY) -m build quantize --checkpoint $(CHECKPOINT) --out $(QUANT_DIR) $(QUANT_ARGS)

quantize: $(QUANT_DIR)/quantize.json ## INT8 quantization-aware training (modelopt), sensitivity table

# The ONNX export depends on what was asked for: PRECISIONS or ONNX_ARGS given (command line or
# environment) and different from the request the last export recorded in $(ONNX_STAMP) re-export.
# Left unsaid (e.g. `make repository`), whatever was exported last is used as it is.
# int8 (the QAT graph) needs the quantized model; fp32/fp16/int8dyn only the checkpoint.
comma        := ,
ONNX_REQUEST := precisions=$(PRECISIONS) args=$(strip $(ONNX_ARGS))
ONNX_STAMP   := $(BUILD_DIR)/onnx.request
ONNX_ASKED   := $(filter command environment,$(firstword $(origin PRECISIONS)) $(firstword $(origin ONNX_ARGS)))
ifneq ($(ONNX_ASKED),)
ifneq ($(file <$(ONNX_STAMP)),$(ONNX_REQUEST))
ONNX_REASK   := onnx-request-changed
endif
endif
onnx-request-changed:

$(ONNX_DIR)/build_report.json: $(CHECKPOINT)/model.safetensors $(ONNX_REASK) \
                               $(if $(filter int8,$(subst $(comma), ,$(PRECISIONS))),$(QUANT_DIR)/quantize.json)
	@echo "==> [onnx] export $(PRECISIONS) $(ONNX_ARGS), each verified against PyTorch on held-out texts"
	$(PY) -m build onnx --checkpoint $(CHECKPOINT) --quantized $(QUANT_DIR) --precisions $(PRECISIONS) --out $(ONNX_DIR) $(ONNX_ARGS)
	@printf '%s\n' '$(ONNX_REQUEST)' > $(ONNX_STAMP)

onnx: $(ONNX_DIR)/build_report.json ## ONNX fp32 / int8 QDQ / int8dyn (PRECISIONS=fp32,fp16,int8,int8dyn ONNX_ARGS=--padded), verified against PyTorch

# No prerequisites: it runs in NVIDIA's TensorRT container (docker compose run --rm builder engines),
# which has no torch to redo the ONNX stage; the timing cache beside $(PLAN_DIR) keeps rebuilds short.
engines: ## TensorRT fp16/int8 plans from padded ONNX, verified on held-out texts (GPU + TensorRT only)
	$(PY) -m build engines --onnx $(ONNX_DIR) --out $(PLAN_DIR) $(ENGINE_ARGS)

torchscript: ## TorchScript fp32/fp16 for TARGET=gpu; meant for the PyTorch 24.10 container (docs/gpu.md)
	$(PY) -m build torchscript --checkpoint $(CHECKPOINT) --out $(TS_DIR)

# the composing models' queue bounds (docs/reliability.md); empty: the build's defaults
QUEUE_TIMEOUT_MS ?=
MAX_QUEUE_SIZE   ?=
QUEUE_ARGS = $(if $(QUEUE_TIMEOUT_MS),--queue-timeout-ms $(QUEUE_TIMEOUT_MS),) \
             $(if $(MAX_QUEUE_SIZE),--max-queue-size $(MAX_QUEUE_SIZE),)
# up to date: build.json newer than what went in (for gpu: the plans and TorchScript too, when present)
GPU_INPUTS = $(if $(filter gpu,$(TARGET)),$(wildcard $(PLAN_DIR)/engines.json $(TS_DIR)/torchscript.json))
repository: $(ONNX_DIR)/build_report.json ## model_repository/ for TARGET=cpu|gpu (atomic swap, new version; FORCE=1; QUEUE_TIMEOUT_MS, MAX_QUEUE_SIZE)
	@if [ -z "$(FORCE)" ] && [ $(REPO)/build.json -nt $(ONNX_DIR)/build_report.json ] \
	    && ! for f in $(GPU_INPUTS); do [ $(REPO)/build.json -nt $$f ] || echo stale; done | grep -q stale \
	    && grep -q '"target": "$(TARGET)"' $(REPO)/build.json; then \
	  echo "==> [repository] $(REPO) is up to date for TARGET=$(TARGET), skipped (FORCE=1 rebuilds)"; \
	else \
	  echo "==> [repository] $(REPO) for TARGET=$(TARGET)"; \
	  $(PY) -m build repository --target $(TARGET) --checkpoint $(CHECKPOINT) --onnx-dir $(ONNX_DIR) \
	    --plan-dir $(PLAN_DIR) --out $(REPO) $(QUEUE_ARGS); \
	fi

# ---- serving -------------------------------------------------------------------------------------
serve: .triton/.installed ## run the embedded Triton server in the foreground
	$(PY) -m server serve --model-repository $(REPO)

CONTROL ?= none
WATCH   ?=
up: .triton/.installed ## start the embedded Triton server in the background (CONTROL=explicit for rollouts; WATCH=5 stays and heals dead stubs)
	$(PY) -m server up --model-repository $(REPO) --model-control-mode $(CONTROL) \
	    $(if $(filter explicit,$(CONTROL)),--load-model '*',) $(if $(WATCH),--watch $(WATCH),)

monitor: up .tools/.prometheus-installed ## Prometheus on 127.0.0.1:9090 scraping the embedded server with deploy/monitoring/ rules
	$(PY) -m server monitor

down: ## stop the embedded Triton server (and Prometheus) and wait until its ports are free
	$(PY) -m server down

status: ## is the embedded server running and ready?
	$(PY) -m server status

rollout: ## load a rebuilt repository into the running server (CONTROL=explicit), zero failed requests; a failed load rolls back
	$(PY) -m server rollout

rollback: ## the repository and the running server (CONTROL=explicit) return to the previous build
	$(PY) -m server rollback

probe: ## one real text through every ensemble of the running server; fails naming a dead one
	$(PY) -m server probe

DRILL ?= rollback
drill: ## rehearse under live traffic: DRILL=rollout|rollback|"kill-stub bert_onnx_fp32_model" (figures)
	$(PY) -m server drill $(DRILL)

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
STEPS ?=
STEP_SECONDS ?= 10
USER_RATE ?=
LOAD_ARGS = $(if $(STEPS),--steps $(STEPS) --step-seconds $(STEP_SECONDS),--users $(USERS) --duration $(DURATION)) \
            $(if $(USER_RATE),--rate $(USER_RATE),)
load: ## bounded headless locust run (USERS=8 DURATION=30s; step load: STEPS=8,64,256 STEP_SECONDS=10 USER_RATE=5) -> reports/load/
	$(PY) -m clients load --run $(RUN) $(LOAD_ARGS)

FACTOR ?= 3
OVERLOAD_SECONDS ?= 10
overload: ## open-loop arrivals at FACTOR=3 x measured capacity for OVERLOAD_SECONDS=10: shed, not queued -> reports/overload/
	$(PY) -m clients overload --run $(RUN) --factor $(FACTOR) --seconds $(OVERLOAD_SECONDS) --out reports/overload

experiments: $(VENV)/.installed ## the reference study's tables on the offline default -> reports/experiments.md
	$(PY) -m training fetch
	$(PY) -m training experiments --out reports

RPS ?= 500
P99 ?= 250
capacity: ## replicas for RPS texts/s at p99 <= P99 ms, from reports/benchmark.json (docs/deploy-kubernetes.md)
	$(PY) -m clients capacity --target-rps $(RPS) --p99-ms $(P99)

dashboard: $(VENV)/.installed ## regenerate the Grafana dashboard JSON from deploy/monitoring/dashboard.py
	$(PY) -m deploy.monitoring.dashboard

# ---- the GPU report (an NVIDIA GPU host with Docker and the NVIDIA container toolkit; docs/gpu.md) -
# Plans and TorchScript are made in NVIDIA's containers (TensorRT 24.10, PyTorch 24.10: the releases
# the Triton 24.10 server loads), the repository and the clients run on the host, the server in the
# container. Paths handed to the containers are relative to this folder (mounted at /workspace).
COMPOSE     ?= docker compose
GPU_OUT     ?= reports/gpu
GPU_URL     ?= 127.0.0.1:8001
GPU_BATCHES ?= 1 8 32 64
GPU_LEVELS  ?= 1,2,4,8,16,32,64
GPU_WAIT    ?= 900
AS_ME        = HOST_UID=$$(id -u) HOST_GID=$$(id -g)
IN_IMAGE     = RUN=$(RUN) CHECKPOINT=$(CHECKPOINT) BUILD_DIR=$(BUILD_DIR)
GPU_BENCH    = $(PY) -m clients benchmark --url $(GPU_URL) --run $(RUN) --no-in-process --sweep-levels $(GPU_LEVELS)

gpu-report: setup ## GPU host + Docker: plans, TorchScript, container, every GPU ensemble, benchmark, perf -> reports/gpu/
	@$(MAKE) --no-print-directory onnx PRECISIONS=fp32,fp16,int8 ONNX_ARGS=--padded
	$(PY) -m server admin-key >/dev/null
	$(AS_ME) $(COMPOSE) run --rm builder engines $(IN_IMAGE)
	$(AS_ME) $(COMPOSE) run --rm torchscript torchscript $(IN_IMAGE)
	@$(MAKE) --no-print-directory repository TARGET=gpu FORCE=1
	$(COMPOSE) up -d --build triton
	@mkdir -p $(GPU_OUT); rc=0; \
	  $(PY) -m clients.gpu_probe wait --out $(GPU_OUT) --timeout $(GPU_WAIT) \
	    && $(PY) -m clients.gpu_probe probe --out $(GPU_OUT) --texts $(TEXTS) || rc=1; \
	  if [ $$rc = 0 ]; then \
	    for b in $(GPU_BATCHES); do \
	      $(GPU_BENCH) --batch-size $$b --out $(GPU_OUT)/batch-$$b $$([ $$b = 32 ] || echo --no-sweep) || rc=1; \
	    done; \
	    $(PY) -m clients perf --url $(GPU_URL) --run $(RUN) --concurrency $(GPU_LEVELS) --out $(GPU_OUT)/perf || rc=1; \
	  fi; \
	  $(COMPOSE) logs --no-color triton > $(GPU_OUT)/triton.log 2>&1; $(COMPOSE) down; \
	  $(PY) -m clients.gpu_report --out $(GPU_OUT) --build-dir $(BUILD_DIR) && cat $(GPU_OUT)/report.md; \
	  exit $$rc

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
