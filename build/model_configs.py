"""Triton model configs, built as `ModelConfig` protobuf messages and printed with text_format.

Nothing here assembles config text by hand: every field goes through tritonclient's
`model_config_pb2`, so a misspelt field or a wrong enum fails at build time, and every written
config.pbtxt parses back (`parse_config`).

One repository serves one checkpoint. Its configs share a `ServingSpec` (labels, batch size,
max length, ...). The models of a repository:

    tokenizer            Python backend: text -> input_ids, attention_mask, token_type_ids
    <ensemble>_model     one per backend and precision: token ids (+ features) -> raw logits
    postprocess          Python backend: raw logits -> logits (FP32), probabilities, label
    <ensemble>           platform "ensemble": text (+ features) -> logits, probabilities, label

Dynamic batching, instance groups and warmup go on every composing model and never on an
ensemble (Triton rejects them there). Warmup samples read real tokenized text from files under
each model's `warmup/` folder, which build/repository.py writes; `warmup_files()` says which.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_FILE = "labels.txt"
TOKENIZER = "tokenizer"
POSTPROCESS = "postprocess"


# Python-backend classifiers run each batch as length-sorted chunks of this many rows, each trimmed
# to its own longest text (build/triton_models/batching.py); 0 runs the batch whole.
DEFAULT_CHUNK_ROWS = 8


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """What every config of one repository shares (read from the checkpoint + build options)."""
    labels: tuple[str, ...]
    multi_label: bool = False
    thresholds: tuple[float, ...] = ()   # multi-label: one per label (empty = 0.5 each)
    num_features: int = 0                # tabular models: raw numeric features per text
    max_batch_size: int = 64
    max_length: int = 128                # tokens, [CLS] and [SEP] included
    pad_token_id: int = 0
    queue_delay_us: int = 100            # dynamic batcher's wait for more requests
    warmup_length: int = 32              # tokens per warmup sample (a typical tweet pads to 32)
    warmup_batch: int = 8                # warmup requests executed together

    def __post_init__(self):
        if not self.labels:
            raise ValueError("ServingSpec needs at least one label")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be > 0 (got {self.max_batch_size}): "
                             "ensembles and dynamic batching need a batch dimension")
        if self.thresholds and len(self.thresholds) != len(self.labels):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(self.labels)} labels")
        if not 1 <= self.warmup_batch <= self.max_batch_size:
            raise ValueError(f"warmup_batch {self.warmup_batch} must be in 1..max_batch_size")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

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


def set_parameter(config: mc.ModelConfig, key: str, value) -> None:
    config.parameters[key].string_value = str(value)


def set_batching(config: mc.ModelConfig, spec: ServingSpec) -> None:
    config.dynamic_batching.max_queue_delay_microseconds = spec.queue_delay_us


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
    # one version served at a time: a rebuild writes a higher version and Triton rolls to it
    config.version_policy.latest.num_versions = 1
    return config


def token_inputs(spec: ServingSpec):
    """(name, data_type, dims) of a classifier's inputs, the order of the ONNX graph."""
    tensors = [(n, mc.TYPE_INT64, [-1]) for n in TEXT_INPUTS]
    if spec.num_features:
        tensors.append(("features", mc.TYPE_FP32, [spec.num_features]))
    return tensors


# ----------------------------------------------------------------------------------------------
# the models

def tokenizer_config(spec: ServingSpec) -> mc.ModelConfig:
    c = new_config(TOKENIZER, spec, backend="python")
    add_input(c, "text", mc.TYPE_STRING, [1])
    for name in TEXT_INPUTS:
        add_output(c, name, mc.TYPE_INT64, [-1])
    set_parameter(c, "max_length", spec.max_length)
    set_parameter(c, "pad_to_multiple_of", 8)
    set_parameter(c, "pad_token_id", spec.pad_token_id)
    # characters kept per text before tokenizing: bounds the work one long text can cause
    set_parameter(c, "max_text_chars", 64 * spec.max_length)
    set_batching(c, spec)
    add_instances(c, CPU)
    add_warmup(c, "text", spec.warmup_batch, {"text": (mc.TYPE_STRING, [1], "text")})
    return c


def postprocess_config(spec: ServingSpec, logits_type: int = mc.TYPE_FP32,
                       name: str = POSTPROCESS) -> mc.ModelConfig:
    """Raw logits (FP32 or FP16) -> logits (FP32), probabilities, label; shared by every ensemble."""
    c = new_config(name, spec, backend="python")
    add_input(c, "raw_logits", logits_type, [spec.num_labels])
    add_output(c, "logits", mc.TYPE_FP32, [spec.num_labels], LABEL_FILE)
    add_output(c, "probabilities", mc.TYPE_FP32, [spec.num_labels], LABEL_FILE)
    add_output(c, "label", mc.TYPE_STRING, [1])
    set_parameter(c, "multi_label", str(spec.multi_label).lower())
    thresholds = spec.thresholds or (0.5,) * spec.num_labels
    set_parameter(c, "thresholds", ",".join(repr(float(t)) for t in thresholds))
    set_batching(c, spec)
    add_instances(c, CPU)
    add_warmup(c, "logits", spec.warmup_batch, {"raw_logits": (logits_type, [spec.num_labels], "zero")})
    return c


def classifier_config(spec: ServingSpec, name: str, runtime: str, logits_type: int = mc.TYPE_FP32,
                      threads: int = 0, precision: str = "fp32",
                      chunk_rows: int = DEFAULT_CHUNK_ROWS) -> mc.ModelConfig:
    """A composing model: token ids (+ features) -> `logits` (B, num_labels), on `runtime`."""
    rt = RUNTIMES[runtime]
    c = new_config(name, spec, backend=rt.backend, platform=rt.platform)
    if rt.platform:
        c.default_model_filename = rt.model_file
    for tensor in token_inputs(spec):
        i = add_input(c, *tensor)
        # Token tensors of single-text requests differ in length (each tokenizer execution pads to
        # its own longest text), and Triton's dynamic batcher only merges requests of one shape
        # unless the input is ragged. A Python model gets each request's tensors separately and
        # pads them together (batching.gather), so it can take them ragged: at concurrency 16 the
        # classifier then ran 1,024 single texts in 153 executions instead of 537. Native backends
        # (ONNX Runtime, TensorRT, TorchScript) would need batch_input tensors to unpack a ragged
        # batch, so they keep the same-shape rule.
        i.allow_ragged_batch = rt.backend == "python" and tensor[0] in TEXT_INPUTS
    add_output(c, "logits", logits_type, [spec.num_labels], LABEL_FILE)
    if rt.backend == "python":
        set_parameter(c, "model_file", rt.model_file)
        set_parameter(c, "threads", threads)          # 0 = every core of the machine
        set_parameter(c, "pad_token_id", spec.pad_token_id)
        set_parameter(c, "precision", precision)
        set_parameter(c, "sort_chunk_rows", chunk_rows)   # batching.run_sorted_chunks: less padding
        if runtime == "python_onnxruntime":   # idle ORT threads sleep: the cores are shared
            set_parameter(c, "allow_spinning", 0)
    if rt.platform == "pytorch_libtorch":
        set_parameter(c, "INFERENCE_MODE", "true")
    set_batching(c, spec)
    add_instances(c, rt.kind)
    T = spec.warmup_tokens
    add_warmup(c, f"batch{spec.warmup_batch}_len{T}", spec.warmup_batch,
               {n: (t, [T] if d == [-1] else d, n) for n, t, d in token_inputs(spec)})
    return c


def ensemble_config(spec: ServingSpec, name: str, model_name: str,
                    postprocess_name: str = POSTPROCESS) -> mc.ModelConfig:
    """text (+ features) -> tokenizer -> model -> postprocess -> logits, probabilities, label."""
    c = new_config(name, spec, platform="ensemble")
    add_input(c, "text", mc.TYPE_STRING, [1])
    if spec.num_features:
        add_input(c, "features", mc.TYPE_FP32, [spec.num_features])
    add_output(c, "logits", mc.TYPE_FP32, [spec.num_labels], LABEL_FILE)
    add_output(c, "probabilities", mc.TYPE_FP32, [spec.num_labels], LABEL_FILE)
    add_output(c, "label", mc.TYPE_STRING, [1])

    def step(model, inputs, outputs):
        s = c.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        s.input_map.update(inputs)     # model's tensor name -> ensemble tensor name
        s.output_map.update(outputs)

    step(TOKENIZER, {"text": "text"}, {n: n for n in TEXT_INPUTS})
    model_inputs = {n: n for n in TEXT_INPUTS}
    if spec.num_features:
        model_inputs["features"] = "features"
    step(model_name, model_inputs, {"logits": "raw_logits"})
    step(postprocess_name, {"raw_logits": "raw_logits"},
         {"logits": "logits", "probabilities": "probabilities", "label": "label"})
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

def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config(text: str, source: str = "config.pbtxt") -> mc.ModelConfig:
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise ValueError(f"{source}: not a valid Triton ModelConfig ({e})") from None


def write_config(config: mc.ModelConfig, model_dir: Path) -> Path:
    """Write model_dir/config.pbtxt and check that it parses back to the same message."""
    path = Path(model_dir) / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = to_text(config)
    if parse_config(text, str(path)) != config:
        raise AssertionError(f"{path}: config does not round-trip through text_format")
    path.write_text(text)
    return path
