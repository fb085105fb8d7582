"""The files inside a model repository, and how a new build replaces the old one.

    model folders      config.pbtxt, labels.txt, warmup/ samples, an empty version folder
    served code        model.py + a copy of the contract package beside it (a Triton version folder
                       must be self-contained: the server imports nothing from this checkout)
    training snapshot  the training modules the PyTorch model needs, as package `training`
    versions           one above the highest version of the repository being replaced
    swap               the finished tree replaces the old one atomically (renameat2 RENAME_EXCHANGE)
"""
from __future__ import annotations

import ast
import ctypes
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import psutil

from build import model_configs as mcfg
from build.model_configs import ServingSpec, mc
from contract.encoder import TextEncoder, load_tokenizer_file
from contract.names import CONTRACT_PACKAGE, FEATURES, LABEL_FILE, TEXT

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


def warmup_tensors(tokenizer_json: Path, spec: ServingSpec, features=None) -> dict[str, bytes]:
    """Raw bytes of one real warmup sample per input name (one request's worth, batch dim excluded),
    tokenized by the served encoder and padded to exactly spec.warmup_tokens.

    `features`: a typical raw feature row for tabular models (the training means), else zeros.
    """
    T = spec.warmup_tokens
    encoder = TextEncoder(load_tokenizer_file(tokenizer_json), T, spec.pad_token_id)
    arrays = encoder.pad(encoder.tokenize([WARMUP_TEXT]), length=T)
    data = {k: v[0].astype("<i8").tobytes() for k, v in arrays.items()}
    row = features if features is not None else np.zeros(spec.num_features)
    data[FEATURES] = np.asarray(row, dtype="<f4").tobytes()
    data[TEXT] = serialize_strings([WARMUP_TEXT])
    return data


# ---- model folders -------------------------------------------------------------------------------

def write_model_dir(root: Path, config: mc.ModelConfig, version: int, spec: ServingSpec,
                    warmup: dict[str, bytes]) -> Path:
    """config.pbtxt, labels.txt (when an output names it), warmup/ files, an empty version folder."""
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


# ---- versions and the atomic swap ----------------------------------------------------------------

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


def building_dir(out: Path) -> Path:
    """This process's temp tree beside `out`."""
    return out.parent / f".{out.name}.building-{os.getpid()}"


def remove_stale_temps(out: Path) -> None:
    """Temp trees of builds that were killed (their process is gone)."""
    for d in out.parent.glob(f".{out.name}.building-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
