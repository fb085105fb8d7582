"""Assemble a Triton model repository for one target from a checkpoint and its exported models.

    python -m build repository --target cpu --checkpoint artifacts/demo/checkpoint \
        --onnx-dir artifacts/demo/build --out model_repository

Targets (ensemble `bert_<backend>_<precision>` -> composing model `<ensemble>_model`):
  cpu  bert_pytorch_fp32  Python backend running our PyTorch model (checkpoint + training/ snapshot)
       bert_onnx_fp32     Python backend running ONNX Runtime on model_fp32.onnx
       bert_onnx_int8     Python backend running ONNX Runtime on model_int8.onnx (QDQ, from QAT)
       bert_onnx_int8dyn  Python backend running ONNX Runtime on model_int8dyn.onnx (quantized
                         dynamically: which INT8 graph is faster depends on the CPU's VNNI/AMX)
  gpu  bert_pytorch_fp32  pytorch_libtorch, TorchScript (build/export_torchscript.py: traced in
                         the server's container when available, else here)
       bert_pytorch_fp16  pytorch_libtorch, the same traced in half precision
       bert_onnx_fp16     onnxruntime_onnx on model_fp16.onnx
       bert_trt_fp16/int8 tensorrt_plan on model_fp16.plan / model_int8.plan
plus the shared `tokenizer` Python model, and on gpu the shared `postprocess` Python model every
ensemble ends in. The cpu classifiers are Python models themselves and post-process their own
logits (contract/postprocess.py, the same code): each request then crosses one Python stub hop
fewer, which is most of what serving one text costs on a CPU. --postprocess-model gives the cpu
ensembles the GPU's shape instead (tokenizer -> classifier -> postprocess), to measure that
difference. A model whose artifact does not exist is skipped and listed (never faked); the build
fails only when nothing can be served.

Versions: every model of one build gets the same version folder, one above the highest version
in the repository being replaced; every config serves exactly that version and every ensemble
step names it, so an ensemble never combines two builds' models, and each response's
model_version says which build answered. The version the replaced repository served is kept
beside it, unserved, with a snapshot of its model-folder files: `python -m server rollback`
returns to it (contract/repository_versions.py describes the layout).

Atomic: everything is written to a hidden folder beside --out and swapped in at the end (an
atomic exchange where Linux offers it), so a failed or interrupted build leaves the previous
repository untouched. build.json at the top records what went in, and the build it replaced.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import sys
from pathlib import Path


from build import model_configs as mcfg
from build.export_torchscript import TorchScriptError, torchscript_for
from build.model_configs import ServingSpec, mc
from build.repository_files import (ROOT, compile_python, copy_source, next_version, snapshot_training,
                                    warmup_tensors, write_model_dir)
from build.repository_inputs import (SUBDIRS, RepositoryError, find_artifact, inspect_onnx, onnx_external_files,
                                     plan_profile_problem, serving_spec)
from contract import cli
from contract.bert_config import BertConfig
from contract.files import sha256_file
from contract.names import DEFAULT_MAX_LENGTH, TOKENIZER_FILE
from contract.repository_versions import (BUILD_FILE, README, building_dir, model_dirs, remove_stale_temps,
                                          retain_previous, snapshot_model_files, swap_tree)

TARGETS = ("cpu", "gpu")


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
        Entry("bert_onnx_int8dyn", "python_onnxruntime", "int8", "model_int8dyn.onnx"),
    ),
    "gpu": (
        Entry("bert_pytorch_fp32", "pytorch_libtorch", "fp32", "torchscript"),
        Entry("bert_pytorch_fp16", "pytorch_libtorch", "fp16", "torchscript"),
        Entry("bert_onnx_fp16", "onnxruntime_onnx", "fp16", "model_fp16.onnx"),
        Entry("bert_trt_fp16", "tensorrt_plan", "fp16", "model_fp16.plan"),
        Entry("bert_trt_int8", "tensorrt_plan", "int8", "model_int8.plan"),
    ),
}


@dataclasses.dataclass
class BuildResult:
    out: Path
    version: int
    models: list[str]
    ensembles: list[str]
    skipped: dict[str, str]           # ensemble -> why it is not in the repository
    previous: int | None = None       # the replaced build's version, kept unserved for a rollback

    def summary(self) -> str:
        lines = [f"model repository {self.out} (version {self.version}): "
                 f"{len(self.models)} models, ensembles {', '.join(self.ensembles)}"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# the build

def build_repository(target: str, checkpoint: str | Path, out: str | Path = ROOT / "model_repository",
                     onnx_dir: str | Path | None = None, plan_dir: str | Path | None = None,
                     max_length: int | None = None, max_batch_size: int = 64, queue_delay_us: int = 100,
                     threads: int = 0, version: int | None = None, log=print,
                     chunk_rows: int = mcfg.DEFAULT_CHUNK_ROWS, postprocess_model: bool = False,
                     max_queue_size: int = mcfg.DEFAULT_MAX_QUEUE_SIZE,
                     queue_timeout_ms: float = mcfg.DEFAULT_QUEUE_TIMEOUT_US / 1000) -> BuildResult:
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
    tokenizer_json = checkpoint / TOKENIZER_FILE
    if not tokenizer_json.is_file():
        raise RepositoryError(f"{checkpoint}: no tokenizer.json (the tokenizer model runs the "
                              "checkpoint's fast tokenizer; save the checkpoint with its tokenizer files)")
    spec = serving_spec(checkpoint, max_length, max_batch_size, queue_delay_us, max_queue_size=max_queue_size,
                        queue_timeout_us=round(queue_timeout_ms * 1000))
    version = version or next_version(out)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = building_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        result = _assemble(tmp, target, checkpoint, spec, onnx_dir, plan_dir, threads, version, log, chunk_rows,
                           postprocess_model)
        _keep_previous(out, tmp, version, result, log)
        if (out / README).is_file():      # the tracked README lives inside model_repository/
            shutil.copy2(out / README, tmp / README)
        swap_tree(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out = out
    log(result.summary())
    return result


def _assemble(root: Path, target: str, checkpoint: Path, spec: ServingSpec, onnx_dir, plan_dir,
              threads: int, version: int, log, chunk_rows: int, postprocess_model: bool) -> BuildResult:
    warmup = warmup_tensors(spec, BertConfig.from_json_file(checkpoint / "config.json").tabular_mean)
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

        folded = rt.backend == "python" and not postprocess_model   # post-processes its own logits
        config = mcfg.classifier_config(spec, e.model, e.runtime, logits_type, threads, e.precision, chunk_rows,
                                        postprocess=folded)
        staging = root / ".staging" / e.model   # artifact first: a skip must leave no model folder
        staging.mkdir(parents=True)
        try:
            if e.artifact == "torchscript":
                try:
                    artifacts[e.model] = torchscript_for(torch_model, checkpoint, e.precision, spec.num_features,
                                                         staging / rt.model_file, [plan_dir, onnx_dir], log)
                except TorchScriptError as err:
                    raise RepositoryError(str(err)) from None
            elif e.artifact == "checkpoint":
                torch_model().save_pretrained(staging / rt.model_file)
                (staging / rt.model_file / "labels.txt").unlink(missing_ok=True)
                modules = snapshot_training(staging)
                copy_source("pytorch_model.py", staging)
                artifacts[e.model] = f"{checkpoint} (training/{{{','.join(modules)}}}.py snapshot)"
            else:
                shutil.copy2(source, staging / rt.model_file)
                for extra in onnx_external_files(source) if source.suffix == ".onnx" else ():
                    shutil.copy2(extra, staging / extra.name)
                if rt.backend == "python":
                    copy_source("onnxruntime_model.py", staging)
                artifacts[e.model] = f"{source} sha256:{sha256_file(source)[:16]}"
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
        post = None
        if not folded:
            post = mcfg.POSTPROCESS if logits_type == mc.TYPE_FP32 else f"{mcfg.POSTPROCESS}_fp16"
            postprocess_types.add((post, logits_type))
        write_model_dir(root, mcfg.ensemble_config(spec, e.ensemble, e.model, post, version=version), version,
                        spec, warmup)
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
    shutil.copy2(checkpoint / TOKENIZER_FILE, version_dir / TOKENIZER_FILE)
    models.append(mcfg.TOKENIZER)

    manifest = {
        "target": target, "version": version,
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint), "labels": list(spec.labels), "multi_label": spec.multi_label,
        "max_length": spec.max_length, "max_batch_size": spec.max_batch_size,
        "ensembles": ensembles, "models": sorted(models), "artifacts": artifacts, "skipped": skipped,
    }
    (root / BUILD_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    for config_path in root.glob("*/config.pbtxt"):   # everything written parses back
        mcfg.parse_config(config_path.read_text(), str(config_path))
    return BuildResult(root, version, sorted(models), ensembles, skipped)


def _keep_previous(out: Path, tmp: Path, version: int, result: BuildResult, log) -> None:
    """Snapshot this build's model-folder files into its version folders, and carry the version the
    old repository serves into the new tree (unserved) so that a rollback can return to it."""
    for model_dir in model_dirs(tmp):
        compile_python(model_dir / str(version))
        snapshot_model_files(model_dir, version)
    previous = retain_previous(out, tmp, version) if out.is_dir() else None
    manifest = json.loads((tmp / BUILD_FILE).read_text())
    manifest["previous"] = previous
    if previous is not None:
        try:
            old = json.loads((out / BUILD_FILE).read_text())
        except (OSError, ValueError):
            old = {"version": previous}
        old.pop("previous_build", None)
        manifest["previous_build"] = old
        log(f"  kept v{previous} (unserved) for `python -m server rollback`")
    (tmp / BUILD_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    result.previous = previous


# ----------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", choices=TARGETS, default="cpu")
    p.add_argument("--checkpoint", required=True, help="Hugging Face layout checkpoint folder")
    p.add_argument("--onnx-dir", help="folder with model_fp32/fp16/int8.onnx (or in its onnx/)")
    p.add_argument("--plan-dir", help="folder with model_fp16/int8.plan (default: --onnx-dir)")
    p.add_argument("--out", default=str(ROOT / "model_repository"))
    p.add_argument("--max-length", type=int, help=f"tokens per text (default {DEFAULT_MAX_LENGTH}, or fewer if the "
                                                  "model has fewer positions)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--queue-delay-us", type=int, default=100, help="dynamic batcher's max queue delay")
    p.add_argument("--queue-timeout-ms", type=float, default=mcfg.DEFAULT_QUEUE_TIMEOUT_US / 1000,
                   help="a request still waiting in a composing model's queue after this is refused (HTTP 503 / "
                        f"gRPC UNAVAILABLE): how the server sheds load. 0 = never (default {mcfg.DEFAULT_QUEUE_TIMEOUT_US // 1000})")
    p.add_argument("--max-queue-size", type=int, default=mcfg.DEFAULT_MAX_QUEUE_SIZE,
                   help="requests waiting per composing model at most, a memory backstop far above what the timeout "
                        "lets build up: a full queue refuses at once but stalls Triton 2.51's batcher "
                        f"(docs/reliability.md). 0 = unbounded (default {mcfg.DEFAULT_MAX_QUEUE_SIZE})")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per Python model (0 = all cores)")
    p.add_argument("--version", type=int, help="version folder number (default: previous + 1)")
    p.add_argument("--postprocess-model", action="store_true",
                   help="cpu: end every ensemble in the shared postprocess model (the GPU's shape, one Python "
                        "stub hop more per request) instead of the classifiers post-processing themselves")
    p.add_argument("--sort-chunk-rows", type=int, default=mcfg.DEFAULT_CHUNK_ROWS,
                   help="CPU Python models run each batch as length-sorted chunks of this many rows, "
                        f"each trimmed to its longest text (0 = whole batch; default {mcfg.DEFAULT_CHUNK_ROWS})")


def run(args: argparse.Namespace) -> int:
    """`python -m build repository ...` (build/__main__.py calls add_arguments and run)."""
    build_repository(args.target, args.checkpoint, args.out, args.onnx_dir, args.plan_dir,
                     args.max_length, args.max_batch_size, args.queue_delay_us,
                     args.threads, args.version, chunk_rows=args.sort_chunk_rows,
                     postprocess_model=args.postprocess_model, max_queue_size=args.max_queue_size,
                     queue_timeout_ms=args.queue_timeout_ms)
    return 0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m build repository", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    sys.exit(cli.run_guarded(lambda: run(args)))


if __name__ == "__main__":
    main()
