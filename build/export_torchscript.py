"""PyTorch classifier -> TorchScript, for Triton's libtorch backend (the GPU repository's bert_pytorch_*).

Each file is traced on the CPU (fp32, or fp16 weights), checked against eager PyTorch at other
shapes than the trace's, and, where CUDA is available, loaded onto the GPU the way Triton loads it
(`torch.jit.load(..., map_location="cuda")`) and checked there as well.

Which torch traces matters. The server's libtorch reads these files, and PyTorch does not promise
that an older libtorch loads what a newer torch wrote. NVIDIA's Triton 24.10 container carries the
libtorch of NVIDIA's PyTorch 24.10 container (torch 2.5.0a0+e000cf0ad9.nv24.10; Triton's build
takes its libtorch from the PyTorch container of the same release), while the host pins torch 2.13.
So the GPU repository's files are meant to be traced inside that container:

    docker compose run --rm torchscript          # = make torchscript PY=python3, in pytorch:24.10-py3

which writes <build>/torchscript/model_fp32.pt, model_fp16.pt and torchscript.json (torch version,
the checkpoint's sha256, parity). `python -m build repository --target gpu` takes those files when
they were traced from the same checkpoint weights; otherwise it traces here with the host's torch
and says so in its log and in build.json (the host-traced fallback: may or may not load in 24.10).

Imports torch and training/ only: the torchscript image installs nothing else (safetensors, to read
the checkpoint).
"""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import torch

from contract.errors import UserError
from contract.files import atomic_dir, atomic_write_json, sha256_file

PRECISIONS = ("fp32", "fp16")
RECORD = "torchscript.json"
FOLDER = "torchscript"              # the Makefile's $(BUILD_DIR)/torchscript, beside onnx/ and engines/
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class TorchScriptError(UserError):
    """A model that cannot be traced, or whose trace disagrees with eager PyTorch."""


def filename(precision: str) -> str:
    return f"model_{precision}.pt"


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
                    raise TorchScriptError(f"TorchScript: {name or 'model'} creates tensors on a fixed "
                                           "device and has no tensor input to take the device from")
                device = graph.create("prim::device", [tensors[0]])
                device.output().setType(torch._C.DeviceObjType.get())
                device.insertBefore(node)
                node.output().replaceAllUsesWith(device.output())
                node.destroy()
                replaced += 1
    return replaced


def _example(vocab_size: int, num_features: int, batch: int, length: int, device="cpu") -> tuple:
    g = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(1, vocab_size, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0    # a padded row, so masking is part of what is checked
    x = [ids, mask, torch.zeros_like(ids)]
    if num_features:
        x.append(torch.randn(batch, num_features, generator=g))
    return tuple(t.to(device) for t in x)


def _max_diff(traced, eager, vocab_size: int, num_features: int, device: str) -> float:
    worst = 0.0
    for shape in ((3, 24), (1, 8)):   # other batch sizes and lengths than the trace's
        x = _example(vocab_size, num_features, *shape, device=device)
        worst = max(worst, (traced(*x) - eager(*x)).abs().max().item())
    return worst


def trace_torchscript(model, precision: str, num_features: int, out_path: Path) -> dict:
    """Trace our model on the CPU (fp32, or fp16 weights), check it, save it; returns the checks made.

    The checks: max |Δlogit| against eager PyTorch on the CPU and, where CUDA is available, on the
    GPU after loading the saved bytes there as Triton does. Over TOLERANCE[precision]: an error.
    """
    if precision not in TOLERANCE:
        raise TorchScriptError(f"TorchScript precision {precision!r}: choose from {PRECISIONS}")
    m = copy.deepcopy(model).eval()
    if precision == "fp16":
        m = m.half()
    wrapper = (_TraceableTabular if num_features else _Traceable)(m).eval()
    vocab, tol = m.config.vocab_size, TOLERANCE[precision]
    checks = {}
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, _example(vocab, num_features, 2, 16), check_trace=False)
        _device_free(traced)
        checks["cpu_max_abs_dlogit"] = _max_diff(traced, wrapper, vocab, num_features, "cpu")
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        if torch.cuda.is_available():
            on_gpu = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cuda")
            checks["cuda_max_abs_dlogit"] = _max_diff(on_gpu, copy.deepcopy(wrapper).cuda(), vocab,
                                                      num_features, "cuda")
    for where, diff in checks.items():
        if not diff <= tol:
            raise TorchScriptError(f"TorchScript {precision}: {where.split('_')[0]} |Δlogit| {diff:.2e} > {tol} "
                                   "against eager PyTorch")
    Path(out_path).write_bytes(buffer.getvalue())
    return checks


def weights_sha256(checkpoint: str | Path) -> str:
    """sha256 of the checkpoint's weights file: what decides whether a traced file is still current."""
    for name in WEIGHT_FILES:
        if (Path(checkpoint) / name).is_file():
            return sha256_file(Path(checkpoint) / name)
    raise TorchScriptError(f"{checkpoint}: no {' or '.join(WEIGHT_FILES)}")


# ---- the `torchscript` stage: trace into a folder, meant for NVIDIA's PyTorch 24.10 container ------
def export_torchscript(checkpoint: str | Path, out_dir: str | Path, precisions=PRECISIONS, log=print) -> dict:
    """Write model_<precision>.pt for each precision and torchscript.json into `out_dir` (atomic swap).

    A precision that cannot be traced with this torch (fp16 kernels missing on some CPU builds) is
    recorded under "failed" with the reason; fp32 failing fails the stage.
    """
    from training.model import BertForSequenceClassification, CheckpointError

    try:
        model = BertForSequenceClassification.from_pretrained(checkpoint).eval()
    except (CheckpointError, ValueError) as e:
        raise TorchScriptError(str(e).splitlines()[0]) from None
    record = {"torch": torch.__version__, "cuda": torch.version.cuda, "checkpoint": str(checkpoint),
              "weights_sha256": weights_sha256(checkpoint), "files": {}, "failed": {}}
    with atomic_dir(out_dir) as tmp:
        for precision in precisions:
            try:
                checks = trace_torchscript(model, precision, model.config.num_tabular_features,
                                           tmp / filename(precision))
            except Exception as e:
                if precision == "fp32":
                    raise
                record["failed"][precision] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                log(f"  {precision}: not traced ({record['failed'][precision]})")
                continue
            record["files"][precision] = {"file": filename(precision), **checks}
            log(f"  {precision}: {filename(precision)} traced with torch {torch.__version__}, " +
                ", ".join(f"{k} {v:.1e}" for k, v in checks.items()))
        atomic_write_json(tmp / RECORD, record)
    return record


def find_traced(precision: str, checkpoint: Path, search: list[Path | None]) -> tuple[Path, dict] | None:
    """A traced file for this precision and checkpoint in a `torchscript/` folder of (or beside)
    one of the `search` folders, with its record; None when there is none or it is stale."""
    for d in search:
        if d is None:
            continue
        for folder in (Path(d) / FOLDER, Path(d).parent / FOLDER):
            record_path = folder / RECORD
            if not record_path.is_file():
                continue
            record = json.loads(record_path.read_text())
            entry = record.get("files", {}).get(precision)
            if entry and record.get("weights_sha256") == weights_sha256(checkpoint) \
                    and (folder / entry["file"]).is_file():
                return folder / entry["file"], record
    return None


def torchscript_for(load_model, checkpoint: Path, precision: str, num_features: int, out_path: Path,
                    search: list[Path | None], log=print) -> str:
    """Put this precision's TorchScript at `out_path`: the file traced for this checkpoint in the
    server's container when there is one, else one traced here (said in the log). Returns the line
    build.json records for it. `load_model()` gives our PyTorch model (loaded only if needed)."""
    import shutil

    found = find_traced(precision, Path(checkpoint), search)
    if found is not None:
        path, record = found
        shutil.copy2(path, out_path)
        return f"TorchScript {precision} traced with torch {record['torch']} ({path})"
    trace_torchscript(load_model(), precision, num_features, out_path)
    looked = ", ".join(str(Path(d) / FOLDER) for d in search if d is not None) or "no folder given"
    log(f"  note: TorchScript {precision} traced here with torch {torch.__version__}; the Triton 24.10 "
        f"container's libtorch is older and may refuse it. No current file from the container in {looked}: "
        "run `docker compose run --rm torchscript` first (docs/gpu.md)")
    return f"TorchScript {precision} traced here with torch {torch.__version__} from {checkpoint} (host fallback)"


# ---- command line: python -m build torchscript ---------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="fine-tuned checkpoint folder")
    p.add_argument("--out", type=Path, required=True,
                   help=f"output folder (replaced atomically), e.g. <build>/{FOLDER} beside onnx/ and engines/")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help=f"comma-separated, from {','.join(PRECISIONS)}")


def run(args) -> int:
    precisions = tuple(p for p in args.precisions.split(",") if p)
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise TorchScriptError(f"--precisions: unknown {bad}, choose from {PRECISIONS}")
    record = export_torchscript(args.checkpoint, args.out, precisions)
    print(f"wrote {args.out}: " + ", ".join(record["files"]) + f" (torch {record['torch']})"
          + (f"; not traced: {', '.join(record['failed'])}" if record["failed"] else ""))
    return 0
