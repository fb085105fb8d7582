"""The held-out reference the `onnx` stage judged every export against, saved for later judges.

reference.json, beside the ONNX files: the held-out texts (with gold labels and, for tabular
models, raw features), the max length they were tokenized to, and PyTorch fp32's logits on them.
A later check that cannot run torch (TensorRT plans, in NVIDIA's TensorRT container) reads it and
applies the same gates (build/verify.py) to the same texts and the same reference.

Imports numpy and the torch-free parts of the build only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from build.artifacts import BuildError, Examples
from contract.files import atomic_write_json

REFERENCE_FILE = "reference.json"


def write_reference(folder: str | Path, examples: Examples, logits: np.ndarray, max_length: int,
                    multi_label: bool) -> Path:
    if len(logits) != len(examples):
        raise BuildError(f"{len(logits)} reference rows for {len(examples)} held-out texts")
    doc = {"max_length": max_length, "multi_label": multi_label, "texts": list(examples.texts),
           "labels": list(examples.labels),
           "features": None if examples.features is None else np.asarray(examples.features).tolist(),
           "logits": np.asarray(logits, dtype=np.float64).tolist()}
    return atomic_write_json(Path(folder) / REFERENCE_FILE, doc, indent=None)


def read_reference(folder: str | Path) -> tuple[Examples, np.ndarray, dict]:
    """(held-out examples, PyTorch fp32 logits (N, num_labels), {"max_length", "multi_label"})."""
    import json

    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        raise BuildError(f"{path}: not found (`python -m build onnx` writes it beside the ONNX files it verified)")
    try:
        doc = json.loads(path.read_text())
        features = None if doc["features"] is None else np.asarray(doc["features"], dtype=np.float32)
        examples = Examples(doc["texts"], doc["labels"], features)
        logits = np.asarray(doc["logits"], dtype=np.float64)
        meta = {"max_length": int(doc["max_length"]), "multi_label": bool(doc["multi_label"])}
    except (ValueError, KeyError, TypeError) as e:
        raise BuildError(f"{path}: not a reference file ({type(e).__name__}: {e})") from None
    if logits.ndim != 2 or len(logits) != len(examples):
        raise BuildError(f"{path}: logits of shape {logits.shape} for {len(examples)} texts")
    return examples, logits, meta
