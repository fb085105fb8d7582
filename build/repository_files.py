"""The files inside a model repository, and how a new build replaces the old one.

    model folders      config.pbtxt, labels.txt, warmup/ samples, an empty version folder
    served code        model.py + a copy of the contract package beside it (a Triton version folder
                       must be self-contained: the server imports nothing from this checkout)
    training snapshot  the training modules the PyTorch model needs, as package `training`
    versions           one above the highest version of the repository being replaced; every config
                       serves exactly that version, every ensemble step names it, and the previous
                       build's version is kept (contract/repository_versions.py: the layout, the
                       carry-over, the atomic swap)
"""
from __future__ import annotations

import ast
import compileall
import shutil
import struct
from pathlib import Path

import numpy as np

from build import model_configs as mcfg
from build.model_configs import ServingSpec, mc
from contract.names import CONTRACT_PACKAGE, FEATURES, LABEL_FILE, TEXT, TEXT_INPUTS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = Path(__file__).resolve().parent / "triton_models"
WARMUP_TEXT = "Warming up: the quick brown fox jumps over the lazy dog, and the server gets ready to answer."


# ---- warmup samples ------------------------------------------------------------------------------

def serialize_strings(texts: list[str]) -> bytes:
    """Triton's BYTES tensor layout: a 4-byte little-endian length before each element."""
    out = b""
    for t in texts:
        b = t.encode("utf-8")
        out += struct.pack("<I", len(b)) + b
    return out


def warmup_tensors(spec: ServingSpec, features=None) -> dict[str, bytes]:
    """Raw bytes of one warmup sample per input name (one request's worth, batch dim excluded).

    The tokenizer warms up on a real sentence. The classifier's token tensors name no vocabulary
    entry but the pad id (spec.warmup_tokens of them, every one attended): Triton keeps one warmup/
    folder per model, shared by its versions, so while a rollout keeps the previous build loaded
    beside the new one, a version may warm up on the other build's files, and ids from one
    vocabulary can be out of range in the other. The compute (shapes, attention) is a real text's.

    `features`: a typical raw feature row for tabular models (the training means), else zeros.
    """
    T = spec.warmup_tokens
    ids, mask, types = np.full(T, spec.pad_token_id), np.ones(T), np.zeros(T)
    data = {k: v.astype("<i8").tobytes() for k, v in zip(TEXT_INPUTS, (ids, mask, types))}
    row = features if features is not None else np.zeros(spec.num_features)
    data[FEATURES] = np.asarray(row, dtype="<f4").tobytes()
    data[TEXT] = serialize_strings([WARMUP_TEXT])
    return data


# ---- model folders -------------------------------------------------------------------------------

def write_model_dir(root: Path, config: mc.ModelConfig, version: int, spec: ServingSpec,
                    warmup: dict[str, bytes]) -> Path:
    """config.pbtxt (serving `version` only), labels.txt (when an output names it), warmup/ files, an
    empty version folder."""
    mcfg.serve_only(config, version)
    model_dir = root / config.name
    mcfg.write_config(config, model_dir)
    if any(o.label_filename for o in config.output):
        (model_dir / LABEL_FILE).write_text("\n".join(spec.labels) + "\n")
    for name in mcfg.warmup_files(config):
        (model_dir / "warmup").mkdir(exist_ok=True)
        (model_dir / "warmup" / name).write_bytes(warmup[name])
    (model_dir / str(version)).mkdir(parents=True)
    return model_dir / str(version)


def copy_source(name: str, version_dir: Path) -> None:
    """build/triton_models/<name> as model.py, and the contract package beside it."""
    shutil.copy2(SOURCES / name, version_dir / "model.py")
    shutil.copytree(ROOT / CONTRACT_PACKAGE, version_dir / CONTRACT_PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


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
    """A copy of the training modules the PyTorch model needs, as package `training` beside model.py
    (they import the contract package, which copy_source puts there too)."""
    pkg = version_dir / "training"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""Snapshot of the project\'s training/ package taken by build/repository.py."""\n')
    modules = training_modules()
    for name in modules:
        shutil.copy2(ROOT / "training" / f"{name}.py", pkg / f"{name}.py")
    return modules


# ---- versions --------------------------------------------------------------------------------

def compile_python(version_dir: Path) -> None:
    """Byte-compile a version folder's Python now, with the interpreter the embedded server's stubs
    run: a stub finds valid .pyc files and writes nothing into the folder it serves (a write would
    make Triton treat the version as modified and reload it during a rollout)."""
    if not compileall.compile_dir(str(version_dir), quiet=1, workers=1):
        raise RuntimeError(f"{version_dir}: Python files that do not compile")


def next_version(out: Path) -> int:
    """One above the highest version folder of any model in the repository being replaced."""
    versions = [int(v.name) for m in (out.iterdir() if out.is_dir() else ()) if m.is_dir()
                for v in m.iterdir() if v.is_dir() and v.name.isdigit()]
    return max(versions, default=0) + 1
