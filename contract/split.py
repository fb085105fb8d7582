"""The fixed 80/10/10 split a training run saves (split.json), and the reader every later stage uses.

split.json names the data file (relative to the repository when inside it), its sha256, how it was
loaded (the DataSpec) and, per split, the texts' 0-based record indices in the file. `load_split`
applies the same loader again and checks the hash, so the build's checks and the benchmark score
exactly the texts that training held out, and fail loudly if the file changed since.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np

from contract.data import (REPO_ROOT, DataError, DataSpec, DataWarning, TextDataset, row_number, load_dataset)
from contract.files import atomic_write_json, sha256_file

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def _strata(ds: TextDataset) -> np.ndarray:
    return np.zeros(len(ds), dtype=np.int64) if ds.multi_label else ds.labels


def stratified_subsample(ds: TextDataset, n: int, seed: int = 0) -> TextDataset:
    """`n` texts with the class proportions of the whole (random for multi-label), in file order."""
    if n <= 0:
        raise DataError(f"--limit must be positive, got {n}")
    if n >= len(ds):
        return ds
    rng = np.random.default_rng([seed, 1])
    strata = _strata(ds)
    classes, counts = np.unique(strata, return_counts=True)
    exact = counts * n / len(ds)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]] += 1  # largest remainders
    picked = [rng.permutation(np.flatnonzero(strata == c))[:q] for c, q in zip(classes, quota)]
    return ds.subset(np.sort(np.concatenate(picked)))


def make_split(ds: TextDataset, seed: int = 0, fractions=SPLIT_FRACTIONS) -> dict[str, np.ndarray]:
    """80/10/10 positions into `ds`, stratified by class for single-label data."""
    rng = np.random.default_rng([seed, 2])
    strata = _strata(ds)
    parts = {s: [] for s in SPLITS}
    for c in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == c))
        n_train = int(round(len(idx) * fractions[0]))
        n_val = int(round(len(idx) * fractions[1]))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train:n_train + n_val])
        parts["test"].append(idx[n_train + n_val:])
    split = {s: np.sort(np.concatenate(p)) for s, p in parts.items()}
    empty = [s for s in SPLITS if len(split[s]) == 0]
    if empty:
        raise DataError(f"{len(ds)} texts are too few for an 80/10/10 split: {'/'.join(empty)} would be empty")
    return split


def save_split(path, ds: TextDataset, split: dict[str, np.ndarray], seed: int, limit: int | None = None) -> Path:
    """split.json: the data file (path relative to the repository when inside it), its sha256, how it
    was loaded (`spec`), and per split the texts' 0-based record indices in the file (pandas positions).
    Read it back with `load_split`, which applies the same loader and checks the hash."""
    path = Path(path)
    doc = {
        "format": 1,
        "data": ds.spec.path,
        "sha256": ds.sha256,
        "spec": dataclasses.asdict(ds.spec),
        "seed": seed,
        "fractions": list(SPLIT_FRACTIONS),
        "limit": limit,
        "index": "0-based record indices into `data` (header excluded; row number in messages = index + 2)",
        "label_names": ds.label_names,
        "problem_type": ds.problem_type,
        "feature_names": ds.feature_names,
        "counts": {s: int(len(split[s])) for s in SPLITS},
    }
    doc.update({s: ds.rows[split[s]].tolist() for s in SPLITS})
    atomic_write_json(path, doc, indent=1)
    return path


def load_split(path, data=None) -> tuple[TextDataset, dict[str, TextDataset]]:
    """Reload the dataset a run used and its saved split: (dataset, {"train", "val", "test"}).

    `data` points at the file when it moved; it must be the same file (checked by its sha256).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        spec = DataSpec(**doc["spec"])
        rows = {s: np.asarray(doc[s], dtype=np.int64) for s in SPLITS}
    except FileNotFoundError:
        raise DataError(f"{path}: no such split file") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a split file written by `python -m training fit` ({e})") from None
    if data is not None:
        spec = dataclasses.replace(spec, path=str(data))
    file = Path(spec.path)
    if not file.is_absolute() and data is None:  # split files store paths relative to the repository
        file = REPO_ROOT / file
    spec = dataclasses.replace(spec, path=str(file))
    if not file.exists():
        raise DataError(f"{path}: its data file {spec.path} is missing (pass the file's new location)")
    digest = sha256_file(file)
    if doc.get("sha256") and digest != doc["sha256"]:
        raise DataError(f"{file}: changed since {path} was made (sha256 {digest[:12]}... vs "
                        f"{doc['sha256'][:12]}...); the saved split no longer names the same texts")
    with warnings.catch_warnings():  # the drops were reported when the split was made
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(spec)
    position = {int(r): i for i, r in enumerate(ds.rows)}
    parts = {}
    for s in SPLITS:
        missing = [int(r) for r in rows[s] if int(r) not in position]
        if missing:
            raise DataError(f"{path}: {s} rows {[row_number(r) for r in missing[:5]]} are not in {file} as loaded now")
        parts[s] = ds.subset([position[int(r)] for r in rows[s]])
    return ds, parts
