"""Assemble a Triton model repository for one target from a checkpoint and its exported models.

    python -m build repository --target cpu --checkpoint artifacts/demo/checkpoint \
        --onnx-dir artifacts/demo/build --out model_repository

Targets (ensemble `bert_<backend>_<precision>` -> composing model `<ensemble>_model`):
  cpu  bert_pytorch_fp32  Python backend running our PyTorch model (checkpoint + training/ snapshot)
       bert_onnx_fp32     Python backend running ONNX Runtime on model_fp32.onnx
       bert_onnx_int8     Python backend running ONNX Runtime on model_int8.onnx (QDQ)
  gpu  bert_pytorch_fp32  pytorch_libtorch, TorchScript traced here from our model
       bert_pytorch_fp16  pytorch_libtorch, the same traced in half precision
       bert_onnx_fp16     onnxruntime_onnx on model_fp16.onnx
       bert_trt_fp16/int8 tensorrt_plan on model_fp16.plan / model_int8.plan
plus the shared `tokenizer` and `postprocess` Python models. A model whose artifact does not
exist is skipped and listed (never faked); the build fails only when nothing can be served.

Versions: every model of one build gets the same version folder, one above the highest version
in the repository being replaced, with `version_policy: latest 1`. A server polling the
repository (or told to reload it) therefore rolls every model to the new build, and each
response's model_version says which build answered.

Atomic: everything is written to a hidden folder beside --out and swapped in at the end (an
atomic exchange where Linux offers it), so a failed or interrupted build leaves the previous
repository untouched. build.json at the top records what went in.
"""
from __future__ import annotations

import argparse
import ast
import ctypes
import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import torch

from build import model_configs as mcfg
from build.model_configs import ServingSpec, mc

ROOT = Path(__file__).resolve().parents[1]
SOURCES = Path(__file__).resolve().parent / "triton_models"
WARMUP_TEXT = "Warming up: the quick brown fox jumps over the lazy dog, and the server gets ready to answer."
TARGETS = ("cpu", "gpu")
DEFAULT_MAX_LENGTH = 128


class RepositoryError(RuntimeError):
    """The repository cannot be built; the message names the file or option at fault."""


@dataclasses.dataclass(frozen=True)
class Entry:
    ensemble: str       # bert_<backend>_<precision>
    runtime: str        # a key of model_configs.RUNTIMES
    precision: str      # fp32 | fp16 | int8
    artifact: str       # file looked up in --onnx-dir / --plan-dir, or "checkpoint" / "torchscript"

    @property
    def model(self) -> str:
        return f"{self.ensemble}_model"


ENTRIES = {
    "cpu": (
        Entry("bert_pytorch_fp32", "python_pytorch", "fp32", "checkpoint"),
        Entry("bert_onnx_fp32", "python_onnxruntime", "fp32", "model_fp32.onnx"),
        Entry("bert_onnx_int8", "python_onnxruntime", "int8", "model_int8.onnx"),
    ),
    "gpu": (
        Entry("bert_pytorch_fp32", "pytorch_libtorch", "fp32", "torchscript"),
        Entry("bert_pytorch_fp16", "pytorch_libtorch", "fp16", "torchscript"),
        Entry("bert_onnx_fp16", "onnxruntime_onnx", "fp16", "model_fp16.onnx"),
        Entry("bert_trt_fp16", "tensorrt_plan", "fp16", "model_fp16.plan"),
        Entry("bert_trt_int8", "tensorrt_plan", "int8", "model_int8.plan"),
    ),
}
# where exported files are looked for, under --onnx-dir / --plan-dir
SUBDIRS = ("", "onnx", "engines")


@dataclasses.dataclass
class BuildResult:
    out: Path
    version: int
    models: list[str]
    ensembles: list[str]
    skipped: dict[str, str]           # ensemble -> why it is not in the repository

    def summary(self) -> str:
        lines = [f"model repository {self.out} (version {self.version}): "
                 f"{len(self.models)} models, ensembles {', '.join(self.ensembles)}"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# inputs

def serving_spec(checkpoint: Path, max_length: int | None, max_batch_size: int,
                 queue_delay_us: int) -> ServingSpec:
    from training.config import BertConfig, ConfigError

    try:
        config = BertConfig.from_json_file(checkpoint / "config.json")
    except ConfigError as e:
        raise RepositoryError(str(e)) from None
    thresholds = config.extra.get("label_thresholds") or ()
    if isinstance(thresholds, (int, float)):
        thresholds = [float(thresholds)] * config.num_labels
    if max_length is None:   # the project's default, unless the model has fewer positions
        max_length = min(DEFAULT_MAX_LENGTH, config.max_position_embeddings)
    if max_length > config.max_position_embeddings:
        raise RepositoryError(f"--max-length {max_length} exceeds the checkpoint's "
                              f"max_position_embeddings {config.max_position_embeddings} ({checkpoint})")
    return ServingSpec(labels=tuple(config.labels), multi_label=config.multi_label,
                       thresholds=tuple(float(t) for t in thresholds),
                       num_features=config.num_tabular_features, max_batch_size=max_batch_size,
                       max_length=max_length, pad_token_id=config.pad_token_id,
                       queue_delay_us=queue_delay_us)


def find_artifact(name: str, dirs: list[Path | None]) -> Path | None:
    for d in dirs:
        if d is None:
            continue
        for sub in SUBDIRS:
            if (d / sub / name).is_file():
                return d / sub / name
    return None


def inspect_onnx(path: Path, spec: ServingSpec) -> int:
    """Check the graph's inputs against the contract; return its logits' Triton data type."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = [i.name for i in model.graph.input]
    expected = [n for n, _, _ in mcfg.token_inputs(spec)]
    if names != expected:
        raise RepositoryError(f"{path}: graph inputs {names}, expected {expected} (build/export_onnx.py)")
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    if "logits" not in outputs:
        raise RepositoryError(f"{path}: no 'logits' output (has {sorted(outputs)})")
    types = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.FLOAT16: mc.TYPE_FP16}
    if outputs["logits"] not in types:
        raise RepositoryError(f"{path}: logits are {onnx.TensorProto.DataType.Name(outputs['logits'])}, "
                              "expected FLOAT or FLOAT16")
    return types[outputs["logits"]]


def plan_profile_problem(plan: Path, spec: ServingSpec) -> str | None:
    """Why a TensorRT plan cannot serve this repository's shapes (from engines.json beside it), or None.

    Triton refuses a plan whose optimization profile is smaller than max_batch_size, and a text
    longer than the profile's max sequence would fail at run time.
    """
    record = plan.parent / "engines.json"
    if not record.is_file():
        return None   # built elsewhere: Triton itself checks the batch dimension at load
    profile = json.loads(record.read_text()).get("profile", {})
    if profile.get("max_batch", spec.max_batch_size) < spec.max_batch_size:
        return (f"{plan} was built for batches up to {profile['max_batch']} < --max-batch-size "
                f"{spec.max_batch_size} (rebuild the engines with --max-batch {spec.max_batch_size})")
    if profile.get("max_seq", spec.max_length) < spec.max_length:
        return (f"{plan} was built for sequences up to {profile['max_seq']} < max length {spec.max_length} "
                f"(rebuild the engines with --max-seq {spec.max_length})")
    return None


def onnx_external_files(path: Path) -> list[Path]:
    """Files of a graph saved with external data (> 2 GB models): they travel with it."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    files = {entry.value for t in model.graph.initializer for entry in t.external_data
             if entry.key == "location"}
    return [path.parent / f for f in sorted(files)]


# ----------------------------------------------------------------------------------------------
# TorchScript for the GPU libtorch backend

class _Traceable(torch.nn.Module):
    """Positional tensors in, float32 logits out (the libtorch backend maps inputs by argument name)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids, attention_mask, token_type_ids).logits.float()


class _TraceableTabular(_Traceable):
    def forward(self, input_ids, attention_mask, token_type_ids, features):
        return self.model(input_ids, attention_mask, token_type_ids, features=features).logits.float()


def _device_free(traced) -> int:
    """Replace devices that tracing froze as constants ("cpu") with the device of an input.

    Tracing records `torch.arange(T, device=x.device)` with the tracing device baked in; the
    GPU server would then mix CPU and GPU tensors. Returns how many constants were replaced.
    """
    replaced = 0
    for name, module in traced.named_modules():
        if not module._c._has_method("forward"):
            continue
        graph = module.graph
        tensors = [v for v in list(graph.inputs())[1:] if v.type().kind() == "TensorType"]
        for node in list(graph.nodes()):
            if node.kind() == "prim::Constant" and node.output().type().kind() == "DeviceObjType":
                if not tensors:
                    raise RepositoryError(f"TorchScript: {name or 'model'} creates tensors on a fixed "
                                          "device and has no tensor input to take the device from")
                device = graph.create("prim::device", [tensors[0]])
                device.output().setType(torch._C.DeviceObjType.get())
                device.insertBefore(node)
                node.output().replaceAllUsesWith(device.output())
                node.destroy()
                replaced += 1
    return replaced


def trace_torchscript(model, precision: str, spec: ServingSpec, out_path: Path) -> None:
    """Trace our model on the CPU (fp32, or fp16 weights) and check it against eager PyTorch."""
    import copy

    m = copy.deepcopy(model).eval()
    if precision == "fp16":
        m = m.half()
    wrapper = (_TraceableTabular if spec.num_features else _Traceable)(m).eval()

    def example(batch, T):
        g = torch.Generator().manual_seed(batch * 1000 + T)
        ids = torch.randint(1, m.config.vocab_size, (batch, T), generator=g)
        mask = torch.ones_like(ids)
        mask[0, T // 2:] = 0    # a padded row, so masking is part of what is checked
        x = [ids, mask, torch.zeros_like(ids)]
        if spec.num_features:
            x.append(torch.randn(batch, spec.num_features, generator=g))
        return tuple(x)

    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example(2, 16), check_trace=False)
        _device_free(traced)
        for shape in ((3, 24), (1, 8)):   # other batch sizes and lengths than the trace's
            x = example(*shape)
            diff = (traced(*x) - wrapper(*x)).abs().max().item()
            tol = 1e-4 if precision == "fp32" else 1e-2
            if not diff <= tol:
                raise RepositoryError(f"TorchScript {precision}: |Δlogit| {diff:.2e} > {tol} at shape {shape}")
    torch.jit.save(traced, str(out_path))


# ----------------------------------------------------------------------------------------------
# files inside the repository

def serialize_strings(texts: list[str]) -> bytes:
    """Triton's BYTES tensor layout: a 4-byte little-endian length before each element."""
    out = b""
    for t in texts:
        b = t.encode("utf-8")
        out += struct.pack("<I", len(b)) + b
    return out


def warmup_tensors(tokenizer_json: Path, spec: ServingSpec, features=None) -> dict[str, bytes]:
    """Raw bytes of one real warmup sample per input name (one request's worth, batch dim excluded).

    `features`: a typical raw feature row for tabular models (the training means), else zeros.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    T = spec.warmup_tokens
    tok.enable_truncation(T)
    enc = tok.encode(WARMUP_TEXT)
    n = len(enc.ids)
    arrays = {"input_ids": np.full(T, spec.pad_token_id), "attention_mask": np.zeros(T),
              "token_type_ids": np.zeros(T)}
    arrays["input_ids"][:n], arrays["attention_mask"][:n] = enc.ids, 1
    data = {k: v.astype("<i8").tobytes() for k, v in arrays.items()}
    row = features if features is not None else np.zeros(spec.num_features)
    data["features"] = np.asarray(row, dtype="<f4").tobytes()
    data["text"] = serialize_strings([WARMUP_TEXT])
    return data


def write_model_dir(root: Path, config: mc.ModelConfig, version: int, spec: ServingSpec,
                    warmup: dict[str, bytes]) -> Path:
    """config.pbtxt, labels.txt (when an output names it), warmup/ files, an empty version folder."""
    model_dir = root / config.name
    mcfg.write_config(config, model_dir)
    if any(o.label_filename for o in config.output):
        (model_dir / mcfg.LABEL_FILE).write_text("\n".join(spec.labels) + "\n")
    for name in mcfg.warmup_files(config):
        (model_dir / "warmup").mkdir(exist_ok=True)
        (model_dir / "warmup" / name).write_bytes(warmup[name])
    (model_dir / str(version)).mkdir(parents=True)
    return model_dir / str(version)


def copy_source(name: str, version_dir: Path, helpers: tuple[str, ...] = ()) -> None:
    shutil.copy2(SOURCES / name, version_dir / "model.py")
    shutil.copy2(ROOT / "contract" / "metrics.py", version_dir / "contract_metrics.py")  # metric names
    for helper in helpers:
        shutil.copy2(SOURCES / helper, version_dir / helper)


def training_modules(start: str = "model") -> list[str]:
    """training/<start>.py and every training.* module it imports, found by reading the source."""
    seen, todo = [], [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        tree = ast.parse((ROOT / "training" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("training."):
                todo.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                todo += [a.name.split(".")[1] for a in node.names if a.name.startswith("training.")]
    return sorted(seen)


def snapshot_training(version_dir: Path) -> list[str]:
    """A copy of the training modules the PyTorch model needs, as package `training` beside model.py."""
    pkg = version_dir / "training"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""Snapshot of the project\'s training/ package taken by build/repository.py."""\n')
    modules = training_modules()
    for name in modules:
        shutil.copy2(ROOT / "training" / f"{name}.py", pkg / f"{name}.py")
    return modules


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# versions and the atomic swap

def next_version(out: Path) -> int:
    """One above the highest version folder of any model in the repository being replaced."""
    versions = [int(v.name) for m in (out.iterdir() if out.is_dir() else ()) if m.is_dir()
                for v in m.iterdir() if v.is_dir() and v.name.isdigit()]
    return max(versions, default=0) + 1


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def swap_in(tmp: Path, out: Path) -> None:
    """Put the finished tmp tree at `out`; the old tree is removed after readers see the new one."""
    if not out.exists():
        tmp.rename(out)
        return
    if _exchange(tmp, out):        # out is the new tree now, tmp holds the old one
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_temps(out: Path) -> None:
    """Temp trees of builds that were killed (their process is gone)."""
    for d in out.parent.glob(f".{out.name}.building-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# the build

def build_repository(target: str, checkpoint: str | Path, out: str | Path = ROOT / "model_repository",
                     onnx_dir: str | Path | None = None, plan_dir: str | Path | None = None,
                     max_length: int | None = None, max_batch_size: int = 64, queue_delay_us: int = 100,
                     threads: int = 0, version: int | None = None, log=print,
                     chunk_rows: int = mcfg.DEFAULT_CHUNK_ROWS) -> BuildResult:
    if target not in TARGETS:
        raise RepositoryError(f"--target {target!r}: expected one of {TARGETS}")
    checkpoint, out = Path(checkpoint), Path(out)
    onnx_dir = Path(onnx_dir) if onnx_dir else None
    plan_dir = Path(plan_dir) if plan_dir else onnx_dir
    # a missing --plan-dir is not an error: the CPU target uses no plans, and on the GPU target each
    # ensemble whose plan is absent is skipped with the path it was looked for in (make engines first)
    for flag, d in (("--checkpoint", checkpoint), ("--onnx-dir", onnx_dir)):
        if d is not None and not d.is_dir():
            raise RepositoryError(f"{flag} {d}: no such folder")
    tokenizer_json = checkpoint / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise RepositoryError(f"{checkpoint}: no tokenizer.json (the tokenizer model runs the "
                              "checkpoint's fast tokenizer; save the checkpoint with its tokenizer files)")
    spec = serving_spec(checkpoint, max_length, max_batch_size, queue_delay_us)
    version = version or next_version(out)

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        result = _assemble(tmp, target, checkpoint, spec, onnx_dir, plan_dir, threads, version, log, chunk_rows)
        if (out / "README.md").is_file():      # the tracked README lives inside model_repository/
            shutil.copy2(out / "README.md", tmp / "README.md")
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out = out
    log(result.summary())
    return result


def _assemble(root: Path, target: str, checkpoint: Path, spec: ServingSpec, onnx_dir, plan_dir,
              threads: int, version: int, log, chunk_rows: int) -> BuildResult:
    from training.config import BertConfig
    warmup = warmup_tensors(checkpoint / "tokenizer.json", spec,
                            BertConfig.from_json_file(checkpoint / "config.json").tabular_mean)
    models, ensembles, skipped, artifacts = [], [], {}, {}
    model = None   # our PyTorch model, loaded once when an entry needs it

    def torch_model():
        nonlocal model
        if model is None:
            from training.model import BertForSequenceClassification, CheckpointError
            try:
                model = BertForSequenceClassification.from_pretrained(checkpoint).eval()
            except (CheckpointError, ValueError) as err:
                raise RepositoryError(str(err).splitlines()[0]) from None
        return model

    postprocess_types = set()
    for e in ENTRIES[target]:
        rt = mcfg.RUNTIMES[e.runtime]
        logits_type = mc.TYPE_FP32
        if e.artifact == "checkpoint":
            source = checkpoint
        elif e.artifact == "torchscript":
            source = None
        else:
            search = [plan_dir] if e.artifact.endswith(".plan") else [onnx_dir]
            source = find_artifact(e.artifact, search)
            if source is None:
                flag = "--plan-dir" if e.artifact.endswith(".plan") else "--onnx-dir"
                where = [str(d / s) if s else str(d) for d in search if d for s in SUBDIRS]
                skipped[e.ensemble] = (f"{e.artifact} not found in {', '.join(where)}" if where
                                       else f"{e.artifact}: no {flag} given")
                continue
            if source.suffix == ".onnx":
                logits_type = inspect_onnx(source, spec)
            elif plan_profile_problem(source, spec):
                skipped[e.ensemble] = plan_profile_problem(source, spec)
                continue

        config = mcfg.classifier_config(spec, e.model, e.runtime, logits_type, threads, e.precision, chunk_rows)
        staging = root / ".staging" / e.model   # artifact first: a skip must leave no model folder
        staging.mkdir(parents=True)
        try:
            if e.artifact == "torchscript":
                trace_torchscript(torch_model(), e.precision, spec, staging / rt.model_file)
                artifacts[e.model] = f"TorchScript {e.precision} traced from {checkpoint}"
            elif e.artifact == "checkpoint":
                torch_model().save_pretrained(staging / rt.model_file)
                (staging / rt.model_file / "labels.txt").unlink(missing_ok=True)
                modules = snapshot_training(staging)
                copy_source("pytorch_model.py", staging, ("batching.py",))
                artifacts[e.model] = f"{checkpoint} (training/{{{','.join(modules)}}}.py snapshot)"
            else:
                shutil.copy2(source, staging / rt.model_file)
                for extra in onnx_external_files(source) if source.suffix == ".onnx" else ():
                    shutil.copy2(extra, staging / extra.name)
                if rt.backend == "python":
                    copy_source("onnxruntime_model.py", staging, ("batching.py", "onnx_session.py"))
                artifacts[e.model] = f"{source} sha256:{sha256(source)[:16]}"
        except Exception as err:
            # half precision on the CPU lacks some kernels in some torch builds: skip, say why
            if e.artifact != "torchscript" or e.precision != "fp16":
                raise
            skipped[e.ensemble] = f"fp16 TorchScript could not be traced on this machine ({err})"
            shutil.rmtree(staging)
            continue

        version_dir = write_model_dir(root, config, version, spec, warmup)
        version_dir.rmdir()
        staging.rename(version_dir)
        post = mcfg.POSTPROCESS if logits_type == mc.TYPE_FP32 else f"{mcfg.POSTPROCESS}_fp16"
        postprocess_types.add((post, logits_type))
        write_model_dir(root, mcfg.ensemble_config(spec, e.ensemble, e.model, post), version, spec, warmup)
        models.append(e.model)
        ensembles.append(e.ensemble)
        log(f"  {e.ensemble}: {e.model} on {e.runtime} ({artifacts[e.model]})")
    shutil.rmtree(root / ".staging", ignore_errors=True)

    if not ensembles:
        raise RepositoryError(f"nothing to serve for target {target}: " +
                              "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    for name, dtype in sorted(postprocess_types):
        copy_source("postprocess.py", write_model_dir(root, mcfg.postprocess_config(spec, dtype, name),
                                                      version, spec, warmup))
        models.append(name)
    version_dir = write_model_dir(root, mcfg.tokenizer_config(spec), version, spec, warmup)
    copy_source("tokenizer.py", version_dir)
    shutil.copy2(checkpoint / "tokenizer.json", version_dir / "tokenizer.json")
    models.append(mcfg.TOKENIZER)

    manifest = {
        "target": target, "version": version,
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint), "labels": list(spec.labels), "multi_label": spec.multi_label,
        "max_length": spec.max_length, "max_batch_size": spec.max_batch_size,
        "ensembles": ensembles, "models": sorted(models), "artifacts": artifacts, "skipped": skipped,
    }
    (root / "build.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for config_path in root.glob("*/config.pbtxt"):   # everything written parses back
        mcfg.parse_config(config_path.read_text(), str(config_path))
    return BuildResult(root, version, sorted(models), ensembles, skipped)


# ----------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", choices=TARGETS, default="cpu")
    p.add_argument("--checkpoint", required=True, help="Hugging Face layout checkpoint folder")
    p.add_argument("--onnx-dir", help="folder with model_fp32/fp16/int8.onnx (or in its onnx/)")
    p.add_argument("--plan-dir", help="folder with model_fp16/int8.plan (default: --onnx-dir)")
    p.add_argument("--out", default=str(ROOT / "model_repository"))
    p.add_argument("--max-length", type=int, help="tokens per text (default 128, or fewer if the model has fewer positions)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--queue-delay-us", type=int, default=100, help="dynamic batcher's max queue delay")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per Python model (0 = all cores)")
    p.add_argument("--version", type=int, help="version folder number (default: previous + 1)")
    p.add_argument("--sort-chunk-rows", type=int, default=mcfg.DEFAULT_CHUNK_ROWS,
                   help="CPU Python models run each batch as length-sorted chunks of this many rows, "
                        f"each trimmed to its longest text (0 = whole batch; default {mcfg.DEFAULT_CHUNK_ROWS})")


def run(args: argparse.Namespace) -> int:
    """`python -m build repository ...` (build/__main__.py calls add_arguments and run)."""
    try:
        build_repository(args.target, args.checkpoint, args.out, args.onnx_dir, args.plan_dir,
                         args.max_length, args.max_batch_size, args.queue_delay_us,
                         args.threads, args.version, chunk_rows=args.sort_chunk_rows)
    except RepositoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m build repository", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    sys.exit(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
