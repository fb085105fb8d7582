"""Triton model configs, built as `ModelConfig` protobuf messages and printed with text_format.

Nothing here assembles config text by hand: every field goes through tritonclient's
`model_config_pb2`, so a misspelt field or a wrong enum fails at build time, and every written
config.pbtxt parses back (`parse_config`).

One repository serves one checkpoint. Its configs share a `ServingSpec` (labels, batch size,
max length, ...). The models of a repository:

    tokenizer            Python backend: text -> input_ids, attention_mask, token_type_ids
    <ensemble>_model     one per backend and precision: token ids (+ features) -> raw logits; a
                         Python-backend (CPU) classifier returns logits, probabilities and label itself
    postprocess          Python backend: raw logits -> logits (FP32), probabilities, label (the
                         native GPU backends' ensembles end in it)
    <ensemble>           platform "ensemble": text (+ features) -> logits, probabilities, label

Dynamic batching, instance groups and warmup go on every composing model and never on an
ensemble (Triton rejects them there). So does the bounded queue (`set_batching`): an ensemble has
no queue of its own, its requests wait in its steps' queues, so shedding load is the composing
models' job. Warmup samples read real tokenized text from files under
each model's `warmup/` folder, which build/repository.py writes; `warmup_files()` says which.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from contract import pbtxt
from contract.errors import UserError
from contract.files import atomic_write_text
from contract.names import (CHARS_PER_TOKEN, DEFAULT_CHUNK_ROWS, DEFAULT_MAX_LENGTH, FEATURES, LABEL, LABEL_FILE,  # noqa: F401
                            LOGITS, PAD_MULTIPLE, POSTPROCESS_MODEL as POSTPROCESS, PROBABILITIES, RAW_LOGITS, TEXT,
                            TEXT_INPUTS, TOKENIZER_MODEL as TOKENIZER)
from contract.params import ClassifierParams, PostprocessParams, TokenizerParams

mc = pbtxt.messages()   # tritonclient's model_config_pb2


# Queue bounds of every composing model, sized from the measured single-text capacity (the figures
# and the command that makes them: docs/reliability.md). The timeout is what sheds load: a request
# still queued after it is refused (HTTP 503 / gRPC UNAVAILABLE, "Request timeout expired"), so past
# capacity a client hears "busy" within about a second instead of waiting until it gives up, and an
# answered request waited at most that long in the queue. 1 s is several full batches of work on a
# 2-core CPU, so a burst the server can absorb is not refused.
# max_queue_size is a memory backstop set far above what the timeout lets build up (arrivals beyond
# capacity x 1 s): Triton 2.51's batcher, once its queue is full, only wakes every ~0.5 s (a refused
# enqueue does not wake it and a finished execution may not either), so a model whose queue stays
# full runs a batch or two a second. Reached only by a flood several times capacity; there it
# refuses at once ("Exceeds maximum queue size", same status).
DEFAULT_MAX_QUEUE_SIZE = 2048
DEFAULT_QUEUE_TIMEOUT_US = 1_000_000


class ServingSpecError(UserError, ValueError):
    """Build options that no repository can serve (no labels, batch size 0, ...)."""


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """What every config of one repository shares (read from the checkpoint + build options)."""
    labels: tuple[str, ...]
    multi_label: bool = False
    thresholds: tuple[float, ...] = ()   # multi-label: one per label (empty = 0.5 each)
    num_features: int = 0                # tabular models: raw numeric features per text
    max_batch_size: int = 64
    max_length: int = DEFAULT_MAX_LENGTH  # tokens, [CLS] and [SEP] included
    pad_token_id: int = 0
    queue_delay_us: int = 100            # dynamic batcher's wait for more requests
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE      # requests waiting per composing model (0: unbounded)
    queue_timeout_us: int = DEFAULT_QUEUE_TIMEOUT_US  # longest wait in one queue before a refusal (0: none)
    vocab_size: int = 0                  # token ids the classifier accepts (0: unchecked)
    type_vocab_size: int = 2             # token type ids the classifier accepts
    max_request_bytes: int = 0           # text bytes per request the tokenizer accepts (0: the default below)
    warmup_length: int = 32              # tokens per warmup sample (a typical tweet pads to 32)
    warmup_batch: int = 8                # warmup requests executed together

    def __post_init__(self):
        if not self.labels:
            raise ServingSpecError("ServingSpec needs at least one label")
        if self.max_batch_size < 1:
            raise ServingSpecError(f"max_batch_size must be > 0 (got {self.max_batch_size}): "
                             "ensembles and dynamic batching need a batch dimension")
        if self.thresholds and len(self.thresholds) != len(self.labels):
            raise ServingSpecError(f"{len(self.thresholds)} thresholds for {len(self.labels)} labels")
        if not 1 <= self.warmup_batch <= self.max_batch_size:
            raise ServingSpecError(f"warmup_batch {self.warmup_batch} must be in 1..max_batch_size")
        if self.max_queue_size and self.max_queue_size < self.max_batch_size:
            # one tokenizer execution hands up to max_batch_size requests to the classifier's queue at
            # once (and the classifier as many to the postprocess): a shorter queue refuses some of
            # them on a quiet server
            raise ServingSpecError(f"max_queue_size {self.max_queue_size} must be 0 (unbounded) or at least "
                                   f"max_batch_size {self.max_batch_size}")
        if self.max_queue_size < 0 or self.queue_timeout_us < 0:
            raise ServingSpecError("max_queue_size and the queue timeout must be >= 0 (0: no bound)")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def request_bytes(self) -> int:
        """Every text of a full request kept whole (max_text_chars characters of up to 4 UTF-8
        bytes each): anything larger is mostly cut away after decoding, so it is refused before."""
        return self.max_request_bytes or self.max_batch_size * CHARS_PER_TOKEN * self.max_length * 4

    @property
    def warmup_tokens(self) -> int:
        return min(self.warmup_length, self.max_length)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How a composing model runs: a native Triton platform or a Python-backend model."""
    key: str
    kind: int                  # mc.ModelInstanceGroup.KIND_CPU / KIND_GPU
    platform: str = ""         # native: onnxruntime_onnx, tensorrt_plan, pytorch_libtorch
    backend: str = ""          # "python" for our own model.py
    model_file: str = ""       # what the version folder holds (default_model_filename)


CPU, GPU = mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU
RUNTIMES = {r.key: r for r in (
    Runtime("python_onnxruntime", CPU, backend="python", model_file="model.onnx"),
    Runtime("python_pytorch", CPU, backend="python", model_file="checkpoint"),
    Runtime("onnxruntime_onnx", GPU, platform="onnxruntime_onnx", model_file="model.onnx"),
    Runtime("tensorrt_plan", GPU, platform="tensorrt_plan", model_file="model.plan"),
    Runtime("pytorch_libtorch", GPU, platform="pytorch_libtorch", model_file="model.pt"),
)}

# numpy dtype names -> Triton data types (for outputs whose type depends on the artifact)
DTYPES = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16}


# ----------------------------------------------------------------------------------------------
# small typed builders

def add_input(config: mc.ModelConfig, name: str, data_type: int, dims) -> mc.ModelInput:
    return config.input.add(name=name, data_type=data_type, dims=list(dims))


def add_output(config: mc.ModelConfig, name: str, data_type: int, dims,
               label_filename: str = "") -> mc.ModelOutput:
    return config.output.add(name=name, data_type=data_type, dims=list(dims),
                             label_filename=label_filename)


def set_parameters(config: mc.ModelConfig, params) -> None:
    """A served model's typed parameters (contract/params.py), as Triton's string values."""
    for key, value in params.to_parameters().items():
        config.parameters[key].string_value = value


def set_batching(config: mc.ModelConfig, spec: ServingSpec) -> None:
    """The dynamic batcher and its bounded queue. Triton 2.51 refuses a request that waited longer
    than the timeout, and one that finds the queue full, with HTTP 503 / gRPC UNAVAILABLE; through an
    ensemble the message is prefixed "in ensemble '<name>', ". Clients may ask for a shorter timeout
    per request (allow_timeout_override), never a longer one."""
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = spec.queue_delay_us
    policy = batching.default_queue_policy
    policy.max_queue_size = spec.max_queue_size
    if spec.queue_timeout_us:
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = spec.queue_timeout_us
        policy.allow_timeout_override = True


def add_instances(config: mc.ModelConfig, kind: int, count: int = 1) -> None:
    config.instance_group.add(kind=kind, count=count)


def add_warmup(config: mc.ModelConfig, name: str, batch_size: int, inputs: dict) -> None:
    """inputs: tensor name -> (data_type, dims, source), source a warmup/ file name or "zero"."""
    sample = config.model_warmup.add(name=name, batch_size=batch_size, count=1)
    for tensor, (data_type, dims, source) in inputs.items():
        w = sample.inputs[tensor]
        w.data_type = data_type
        w.dims.extend(dims)
        if source == "zero":
            w.zero_data = True
        else:
            w.input_data_file = source


def new_config(name: str, spec: ServingSpec, *, backend: str = "", platform: str = "") -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend=backend, platform=platform,
                            max_batch_size=spec.max_batch_size)
    # one version served at a time; a repository build names it (serve_only)
    config.version_policy.latest.num_versions = 1
    return config


def serve_only(config: mc.ModelConfig, version: int) -> mc.ModelConfig:
    """Serve exactly `version`. The repository keeps the previous build's version folder beside this
    one (for a rollback), so "latest" would be wrong after a rollback; naming the version is right
    in both directions. An ensemble must already call its steps at that version (ensemble_config)."""
    config.version_policy.Clear()
    config.version_policy.specific.versions.append(version)
    wrong = [f"{s.model_name} v{s.model_version}" for s in config.ensemble_scheduling.step
             if s.model_version != version]
    if wrong:
        raise ServingSpecError(f"ensemble {config.name!r} served as v{version} calls {', '.join(wrong)}: "
                               "an ensemble calls its own build's models (ensemble_config(version=...))")
    return config


def token_inputs(spec: ServingSpec):
    """(name, data_type, dims) of a classifier's inputs, the order of the ONNX graph."""
    tensors = [(n, mc.TYPE_INT64, [-1]) for n in TEXT_INPUTS]
    if spec.num_features:
        tensors.append((FEATURES, mc.TYPE_FP32, [spec.num_features]))
    return tensors


# ----------------------------------------------------------------------------------------------
# the models

def tokenizer_config(spec: ServingSpec) -> mc.ModelConfig:
    c = new_config(TOKENIZER, spec, backend="python")
    add_input(c, TEXT, mc.TYPE_STRING, [1])
    for name in TEXT_INPUTS:
        add_output(c, name, mc.TYPE_INT64, [-1])
    # max_text_chars: characters kept per text before tokenizing, which bounds the work one long text
    # causes; max_request_bytes: a request larger than that is refused before its texts are decoded
    set_parameters(c, TokenizerParams(max_length=spec.max_length, pad_to_multiple_of=PAD_MULTIPLE,
                                      pad_token_id=spec.pad_token_id,
                                      max_text_chars=CHARS_PER_TOKEN * spec.max_length,
                                      max_request_bytes=spec.request_bytes))
    set_batching(c, spec)
    add_instances(c, CPU)
    add_warmup(c, TEXT, spec.warmup_batch, {TEXT: (mc.TYPE_STRING, [1], TEXT)})
    return c


def spec_thresholds(spec: ServingSpec) -> tuple[float, ...]:
    return spec.thresholds or (0.5,) * spec.num_labels


def postprocess_config(spec: ServingSpec, logits_type: int = mc.TYPE_FP32,
                       name: str = POSTPROCESS) -> mc.ModelConfig:
    """Raw logits (FP32 or FP16) -> logits (FP32), probabilities, label; shared by every ensemble."""
    c = new_config(name, spec, backend="python")
    add_input(c, RAW_LOGITS, logits_type, [spec.num_labels])
    add_output(c, LOGITS, mc.TYPE_FP32, [spec.num_labels], LABEL_FILE)
    add_output(c, PROBABILITIES, mc.TYPE_FP32, [spec.num_labels], LABEL_FILE)
    add_output(c, LABEL, mc.TYPE_STRING, [1])
    set_parameters(c, PostprocessParams(spec.multi_label, spec_thresholds(spec)))
    set_batching(c, spec)
    add_instances(c, CPU)
    add_warmup(c, LOGITS, spec.warmup_batch, {RAW_LOGITS: (logits_type, [spec.num_labels], "zero")})
    return c


def classifier_config(spec: ServingSpec, name: str, runtime: str, logits_type: int = mc.TYPE_FP32,
                      threads: int = 0, precision: str = "fp32",
                      chunk_rows: int = DEFAULT_CHUNK_ROWS, postprocess: bool = False) -> mc.ModelConfig:
    """A composing model: token ids (+ features) -> `logits` (B, num_labels), on `runtime`.

    postprocess (Python backends only): the model also returns `probabilities` and `label`, through
    the same contract.postprocess the shared postprocess model runs, so its ensemble has one
    Python stub hop fewer per request (ensemble_config with postprocess_name=None)."""
    if postprocess and RUNTIMES[runtime].backend != "python":
        raise ServingSpecError(f"{name}: only Python-backend classifiers post-process themselves ({runtime} cannot)")
    rt = RUNTIMES[runtime]
    c = new_config(name, spec, backend=rt.backend, platform=rt.platform)
    if rt.platform:
        c.default_model_filename = rt.model_file
    for tensor in token_inputs(spec):
        i = add_input(c, *tensor)
        # Token tensors of single-text requests differ in length (each tokenizer execution pads to
        # its own longest text), and Triton's dynamic batcher only merges requests of one shape
        # unless the input is ragged. A Python model gets each request's tensors separately and
        # pads them together (batching.gather), so it can take them ragged and concurrent single
        # texts share executions instead of running one execution per shape. Native backends
        # (ONNX Runtime, TensorRT, TorchScript) would need batch_input tensors to unpack a ragged
        # batch, so they keep the same-shape rule.
        i.allow_ragged_batch = rt.backend == "python" and tensor[0] in TEXT_INPUTS
    add_output(c, LOGITS, logits_type, [spec.num_labels], LABEL_FILE)
    if postprocess:
        add_output(c, PROBABILITIES, mc.TYPE_FP32, [spec.num_labels], LABEL_FILE)
        add_output(c, LABEL, mc.TYPE_STRING, [1])
    if rt.backend == "python":
        # threads 0 = every core; sort_chunk_rows: contract.batching.run_sorted_chunks (less padding);
        # allow_spinning off: idle ONNX Runtime threads sleep, the cores are shared
        set_parameters(c, ClassifierParams(model_file=rt.model_file, threads=threads, pad_token_id=spec.pad_token_id,
                                           precision=precision, sort_chunk_rows=chunk_rows, allow_spinning=False,
                                           postprocess=postprocess, multi_label=spec.multi_label and postprocess,
                                           thresholds=spec_thresholds(spec) if postprocess else (),
                                           vocab_size=spec.vocab_size, type_vocab_size=spec.type_vocab_size,
                                           max_length=spec.max_length))
    if rt.platform == "pytorch_libtorch":
        c.parameters["INFERENCE_MODE"].string_value = "true"   # the libtorch backend's own parameter
    set_batching(c, spec)
    add_instances(c, rt.kind)
    T = spec.warmup_tokens
    add_warmup(c, f"batch{spec.warmup_batch}_len{T}", spec.warmup_batch,
               {n: (t, [T] if d == [-1] else d, n) for n, t, d in token_inputs(spec)})
    return c


def ensemble_config(spec: ServingSpec, name: str, model_name: str,
                    postprocess_name: str | None = POSTPROCESS, version: int = -1) -> mc.ModelConfig:
    """text (+ features) -> tokenizer -> model -> postprocess -> logits, probabilities, label;
    postprocess_name None: the model returns all three itself (classifier_config(postprocess=True)).

    `version`: the build's version number, which every step names. Each step of an ensemble picks
    its model's version on its own; with -1 ("the latest ready") a request during a rollout could
    meet the new tokenizer and the old classifier, whose vocabularies may differ. Named versions
    make that impossible: the ensemble of build N calls only build N's models, and a rollout keeps
    them loaded until no ensemble of build N is left (server/rollout.py). -1 is for configs that
    are not part of a repository build."""
    c = new_config(name, spec, platform="ensemble")
    add_input(c, TEXT, mc.TYPE_STRING, [1])
    if spec.num_features:
        add_input(c, FEATURES, mc.TYPE_FP32, [spec.num_features])
    add_output(c, LOGITS, mc.TYPE_FP32, [spec.num_labels], LABEL_FILE)
    add_output(c, PROBABILITIES, mc.TYPE_FP32, [spec.num_labels], LABEL_FILE)
    add_output(c, LABEL, mc.TYPE_STRING, [1])

    def step(model, inputs, outputs):
        s = c.ensemble_scheduling.step.add(model_name=model, model_version=version)
        s.input_map.update(inputs)     # model's tensor name -> ensemble tensor name
        s.output_map.update(outputs)

    step(TOKENIZER, {TEXT: TEXT}, {n: n for n in TEXT_INPUTS})
    model_inputs = {n: n for n in TEXT_INPUTS}
    if spec.num_features:
        model_inputs[FEATURES] = FEATURES
    if postprocess_name is None:
        step(model_name, model_inputs, {n: n for n in (LOGITS, PROBABILITIES, LABEL)})
        return c
    step(model_name, model_inputs, {LOGITS: RAW_LOGITS})
    step(postprocess_name, {RAW_LOGITS: RAW_LOGITS}, {n: n for n in (LOGITS, PROBABILITIES, LABEL)})
    return c


def warmup_files(config: mc.ModelConfig) -> dict[str, tuple[int, list[int]]]:
    """warmup/ file name -> (data_type, dims) for every file-backed warmup input of `config`."""
    files = {}
    for sample in config.model_warmup:
        for w in sample.inputs.values():
            if w.WhichOneof("input_data_type") == "input_data_file":
                files[w.input_data_file] = (w.data_type, list(w.dims))
    return files


# ----------------------------------------------------------------------------------------------
# text <-> message

to_text = pbtxt.to_text
parse_config = pbtxt.parse


def write_config(config: mc.ModelConfig, model_dir: Path) -> Path:
    """Write model_dir/config.pbtxt and check that it parses back to the same message."""
    path = Path(model_dir) / pbtxt.CONFIG_FILE
    text = to_text(config)
    if parse_config(text, str(path)) != config:
        raise AssertionError(f"{path}: config does not round-trip through text_format")
    return atomic_write_text(path, text)
