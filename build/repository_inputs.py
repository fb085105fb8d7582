"""What goes into a model repository, checked before anything is written: the checkpoint's serving
spec (labels, thresholds, max length, pad id, from its config.json) and the exported artifacts
(where they are, whether an ONNX graph has the contract's inputs and outputs, whether a TensorRT
plan's profile covers the repository's shapes).
"""
from __future__ import annotations

import json
from pathlib import Path

from build import model_configs as mcfg
from build.model_configs import ServingSpec, mc
from contract.bert_config import BertConfig, ConfigError
from contract.errors import UserError
from contract.names import DEFAULT_MAX_LENGTH, LOGITS

# where exported files are looked for, under --onnx-dir / --plan-dir
SUBDIRS = ("", "onnx", "engines")


class RepositoryError(UserError, RuntimeError):
    """The repository cannot be built; the message names the file or option at fault."""


def serving_spec(checkpoint: Path, max_length: int | None, max_batch_size: int,
                 queue_delay_us: int, **options) -> ServingSpec:
    """The checkpoint's spec; options: further ServingSpec fields (the queue bounds, ...)."""
    try:
        config = BertConfig.from_json_file(checkpoint / "config.json")
        thresholds = config.label_thresholds
    except ConfigError as e:
        raise RepositoryError(str(e)) from None
    if max_length is None:   # the project's default, unless the model has fewer positions
        max_length = min(DEFAULT_MAX_LENGTH, config.max_position_embeddings)
    if max_length > config.max_position_embeddings:
        raise RepositoryError(f"--max-length {max_length} exceeds the checkpoint's "
                              f"max_position_embeddings {config.max_position_embeddings} ({checkpoint})")
    return ServingSpec(labels=tuple(config.labels), multi_label=config.multi_label,
                       thresholds=tuple(float(t) for t in thresholds),
                       num_features=config.num_tabular_features, max_batch_size=max_batch_size,
                       max_length=max_length, pad_token_id=config.pad_token_id,
                       queue_delay_us=queue_delay_us, vocab_size=config.vocab_size,
                       type_vocab_size=config.type_vocab_size, **options)


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
    if LOGITS not in outputs:
        raise RepositoryError(f"{path}: no '{LOGITS}' output (has {sorted(outputs)})")
    types = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.FLOAT16: mc.TYPE_FP16}
    if outputs[LOGITS] not in types:
        raise RepositoryError(f"{path}: logits are {onnx.TensorProto.DataType.Name(outputs[LOGITS])}, "
                              "expected FLOAT or FLOAT16")
    return types[outputs[LOGITS]]


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
