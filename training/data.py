"""Datasets: CSV loaders, the fixed 80/10/10 split saved beside a run, and tokenized batches.

Every loader returns a `TextDataset` (texts, integer labels or multi-hot label rows, optional tabular
features, label names, problem type), whatever the file's schema:

- `stackoverflow`: Kaggle's closed-question `train-sample.csv` (title + body, open vs closed, five
  numeric features);
- `csv`: any CSV with a text column and a label column;
- `multilabel`: a CSV with several 0/1 label columns (e.g. Jigsaw toxic comments' `train.csv`);
- `tweets`: the bundled tweets (`python -m training fetch`), negative vs positive or three classes.

Row numbers in messages count the header as row 1, as a spreadsheet shows them (a quoted field that
spans several lines is still one row); split.json stores 0-based record indices (row number - 2), the
positions `pandas.read_csv` gives the rows. Bad input is an error naming the file, row, column and value;
rows with empty text are dropped with a warning that counts them, never silently.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from training.fetch import REPO_ROOT, default_dataset, sha256_of

log = logging.getLogger("training")

KINDS = ("auto", "tweets", "stackoverflow", "csv", "multilabel")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
MAX_LENGTH_LIMIT = 512

SO_COLUMNS = ("PostId", "PostCreationDate", "OwnerUserId", "OwnerCreationDate", "ReputationAtPostCreation",
              "OwnerUndeletedAnswerCountAtPostTime", "Title", "BodyMarkdown", "Tag1", "Tag2", "Tag3", "Tag4",
              "Tag5", "PostClosedDate", "OpenStatus")
SO_CLOSE_REASONS = ("not a real question", "not constructive", "off topic", "too localized")
SO_FEATURES = ("account_age_days", "num_tags", "reputation", "title_words", "body_words")
SO_DATE_FORMATS = ("%m/%d/%Y %H:%M:%S", "ISO8601")

TWEET_CLASSES = ("negative", "neutral", "positive")


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, row, column and value."""


class DataWarning(UserWarning):
    """Something was dropped from the data (always counted, never silent)."""


# ---- the dataset object ----------------------------------------------------------------------
@dataclasses.dataclass
class DataSpec:
    """How to load a dataset: enough to load the same rows again later (saved in split.json)."""
    kind: str = "auto"
    path: str | None = None            # None = the bundled tweets
    text_column: str | None = None     # csv / multilabel (default "text")
    label_column: str | None = None    # csv (default "label")
    label_columns: list[str] | None = None  # multilabel
    labels: list[str] | None = None    # csv: the allowed label values, in class-id order
    tweets_task: str = "binary"        # tweets: "binary" (negative vs positive) or "3class"
    encoding: str = "utf-8"


@dataclasses.dataclass
class TextDataset:
    texts: list[str]
    labels: np.ndarray                 # (N,) int64 class ids, or (N, L) float32 multi-hot rows
    label_names: list[str]
    problem_type: str                  # "single_label_classification" | "multi_label_classification"
    rows: np.ndarray                   # (N,) each text's 0-based record index in its file (row number - 2)
    features: np.ndarray | None = None  # (N, k) float32 tabular features, or None
    feature_names: list[str] | None = None
    spec: DataSpec | None = None
    sha256: str | None = None          # of the data file, so a saved split can check it is the same file

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label_classification"

    def subset(self, idx: Sequence[int] | np.ndarray) -> "TextDataset":
        idx = np.asarray(idx, dtype=np.int64)
        return dataclasses.replace(
            self, texts=[self.texts[i] for i in idx], labels=self.labels[idx], rows=self.rows[idx],
            features=None if self.features is None else self.features[idx])

    def class_counts(self) -> dict[str, int]:
        counts = self.labels.sum(0) if self.multi_label else np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(c) for name, c in zip(self.label_names, counts)}


# ---- reading CSV files -----------------------------------------------------------------------
def _pandas_read(path: Path, encoding: str, **kwargs):
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a CSV file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not readable as {encoding} text (byte {e.start}: {e.reason}); "
                        f"is it a CSV? pass --encoding if it is another text encoding") from None
    except (pd.errors.ParserError, ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable CSV file ({str(e).strip().splitlines()[0]})") from None


def _read_csv(path: Path, encoding: str = "utf-8"):
    df = _pandas_read(path, encoding)
    if len(df) == 0:
        raise DataError(f"{path}: no data rows (only a header: {list(df.columns)})")
    return df.fillna("")  # short rows give NaN even with keep_default_na=False


def _read_header(path: Path, encoding: str) -> list[str]:
    return list(_pandas_read(path, encoding, nrows=0).columns)


def _require_columns(df, path: Path, columns) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {missing}; "
                        f"the file has {list(df.columns)}")


def _row_numbers(df) -> np.ndarray:
    return np.arange(len(df), dtype=np.int64)  # 0-based record indices


def _row(record: int) -> int:
    """The row number a person sees: the header is row 1, the first record row 2."""
    return int(record) + 2


def _drop_empty_texts(texts: list[str], rows: np.ndarray, path: Path) -> np.ndarray:
    """Boolean mask of rows to keep; warns with the count and the first row numbers of the dropped."""
    keep = np.array([bool(t.strip()) for t in texts], dtype=bool)
    n = int((~keep).sum())
    if n:
        first = ", ".join(str(_row(r)) for r in rows[~keep][:5])
        warnings.warn(f"{path}: dropped {n} row{'s' if n > 1 else ''} with empty text (rows {first}"
                      f"{', ...' if n > 5 else ''})", DataWarning, stacklevel=3)
    return keep


def _class_ids(values: Sequence[str], rows: np.ndarray, names: Sequence[str], path: Path, column: str) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    out = np.empty(len(values), dtype=np.int64)
    for j, v in enumerate(values):
        i = index.get(v)
        if i is None:
            what = "empty label" if v == "" else f"unknown label {v!r}"
            raise DataError(f"{path}: row {_row(rows[j])}: {what} in column {column!r} (expected one of {list(names)})")
        out[j] = i
    return out


def _sorted_labels(values) -> list[str]:
    uniq = sorted(set(values))
    try:  # numeric labels sort as numbers: 2 before 10
        return sorted(uniq, key=float)
    except ValueError:
        return uniq


# ---- the four loaders ------------------------------------------------------------------------
def load_csv(path, text_column: str = "text", label_column: str = "label", labels: list[str] | None = None,
             encoding: str = "utf-8", spec: DataSpec | None = None) -> TextDataset:
    """Any CSV with a text column and a label column (single-label classification)."""
    path = Path(path)
    df = _read_csv(path, encoding)
    _require_columns(df, path, [text_column, label_column])
    rows = _row_numbers(df)
    texts = df[text_column].tolist()
    keep = _drop_empty_texts(texts, rows, path)
    texts, rows = [t for t, k in zip(texts, keep) if k], rows[keep]
    values = [v.strip() for v in df[label_column].to_numpy()[keep]]
    if labels is None:
        for j, v in enumerate(values):
            if v == "":
                raise DataError(f"{path}: row {_row(rows[j])}: empty label in column {label_column!r}")
        labels = _sorted_labels(values)
    if len(labels) < 2:
        raise DataError(f"{path}: column {label_column!r} has a single label value {labels}; "
                        f"classification needs at least two")
    ids = _class_ids(values, rows, labels, path, label_column)
    spec = spec or DataSpec(kind="csv", path=str(path), text_column=text_column, label_column=label_column,
                            labels=labels, encoding=encoding)
    return TextDataset(texts, ids, list(labels), "single_label_classification", rows, spec=spec)


def load_multilabel(path, text_column: str = "text", label_columns: Sequence[str] = (),
                    encoding: str = "utf-8", spec: DataSpec | None = None) -> TextDataset:
    """A CSV with several 0/1 label columns (multi-label: any number of labels per text)."""
    path = Path(path)
    label_columns = list(label_columns)
    if len(label_columns) < 2:
        raise DataError(f"{path}: multi-label data needs at least two --label-columns, got {label_columns}")
    df = _read_csv(path, encoding)
    _require_columns(df, path, [text_column] + label_columns)
    rows = _row_numbers(df)
    texts = df[text_column].tolist()
    keep = _drop_empty_texts(texts, rows, path)
    texts, rows = [t for t, k in zip(texts, keep) if k], rows[keep]
    labels = np.empty((len(texts), len(label_columns)), dtype=np.float32)
    for c, col in enumerate(label_columns):
        for j, v in enumerate(df[col].to_numpy()[keep]):
            try:
                x = float(v)
            except ValueError:
                x = None
            if x not in (0.0, 1.0):
                raise DataError(f"{path}: row {_row(rows[j])}: column {col!r} must be 0 or 1, got {v!r}")
            labels[j, c] = x
    spec = spec or DataSpec(kind="multilabel", path=str(path), text_column=text_column,
                            label_columns=label_columns, encoding=encoding)
    return TextDataset(texts, labels, label_columns, "multi_label_classification", rows, spec=spec)


def load_tweets(path=None, task: str = "binary", spec: DataSpec | None = None) -> TextDataset:
    """The bundled tweets (latin-1; columns sentiment,confidence,text). `binary` keeps negative vs
    positive and drops neutral (counted in the log); `3class` keeps all three."""
    if task not in ("binary", "3class"):
        raise DataError(f"--tweets-task {task!r}: expected binary or 3class")
    path = Path(path) if path is not None else default_dataset()
    df = _read_csv(path, "latin-1")
    _require_columns(df, path, ["sentiment", "text"])
    rows = _row_numbers(df)
    texts = df["text"].tolist()
    keep = _drop_empty_texts(texts, rows, path)
    sentiment = df["sentiment"].str.strip().to_numpy()
    ids = _class_ids(sentiment[keep], rows[keep], TWEET_CLASSES, path, "sentiment")
    texts, rows = [t for t, k in zip(texts, keep) if k], rows[keep]
    names = list(TWEET_CLASSES)
    if task == "binary":
        neutral = ids == TWEET_CLASSES.index("neutral")
        log.info(f"{path}: binary task (negative vs positive): dropped {int(neutral.sum()):,} neutral tweets, "
                 f"kept {int((~neutral).sum()):,}")
        texts = [t for t, n in zip(texts, neutral) if not n]
        rows, ids = rows[~neutral], ids[~neutral]
        ids = np.where(ids == TWEET_CLASSES.index("positive"), 1, 0)
        names = ["negative", "positive"]
    spec = spec or DataSpec(kind="tweets", path=str(path), tweets_task=task, encoding="latin-1")
    return TextDataset(texts, ids.astype(np.int64), names, "single_label_classification", rows, spec=spec)


def load_stackoverflow(path, spec: DataSpec | None = None, encoding: str = "utf-8") -> TextDataset:
    """Kaggle's Stack Overflow closed-question CSV: text = title + body; open vs closed (every close
    reason counts as closed); features: account age in days, tags, reputation, title and body words."""
    import pandas as pd

    path = Path(path)
    df = _read_csv(path, encoding)
    _require_columns(df, path, SO_COLUMNS)
    rows = _row_numbers(df)
    titles, bodies = df["Title"].tolist(), df["BodyMarkdown"].tolist()
    texts = [f"{t.strip()}\n{b.strip()}".strip() for t, b in zip(titles, bodies)]
    keep = _drop_empty_texts(texts, rows, path)

    status = df["OpenStatus"].str.strip().str.lower().to_numpy()
    ids = _class_ids([("open" if s == "open" else "closed" if s in SO_CLOSE_REASONS else s) for s in status[keep]],
                     rows[keep], ["open", "closed"], path, "OpenStatus")

    def dates(col):
        raw = df[col].str.strip()
        parsed = pd.to_datetime(raw, format=SO_DATE_FORMATS[0], errors="coerce")
        retry = parsed.isna() & (raw != "")
        if retry.any():
            parsed[retry] = pd.to_datetime(raw[retry], format=SO_DATE_FORMATS[1], errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy() & keep)
        if len(bad):
            j = bad[0]
            raise DataError(f"{path}: row {_row(rows[j])}: column {col!r} is not a date: {raw.iloc[j]!r} "
                            f"(expected like 07/31/2008 21:42:52)")
        return parsed

    age_days = (dates("PostCreationDate") - dates("OwnerCreationDate")).dt.total_seconds().to_numpy() / 86400.0
    reputation = pd.to_numeric(df["ReputationAtPostCreation"].str.strip(), errors="coerce").to_numpy()
    bad = np.flatnonzero(np.isnan(reputation) & keep)
    if len(bad):
        j = bad[0]
        raise DataError(f"{path}: row {_row(rows[j])}: column 'ReputationAtPostCreation' is not a number: "
                        f"{df['ReputationAtPostCreation'].iloc[j]!r}")
    tags = (df[[f"Tag{i}" for i in range(1, 6)]].apply(lambda s: s.str.strip() != "")).sum(axis=1).to_numpy()
    title_words = np.array([len(t.split()) for t in titles])
    body_words = np.array([len(b.split()) for b in bodies])
    features = np.stack([age_days, tags, reputation, title_words, body_words], axis=1).astype(np.float32)[keep]

    spec = spec or DataSpec(kind="stackoverflow", path=str(path), encoding=encoding)
    return TextDataset([t for t, k in zip(texts, keep) if k], ids, ["open", "closed"],
                       "single_label_classification", rows[keep], features=features,
                       feature_names=list(SO_FEATURES), spec=spec)


def detect_kind(spec: DataSpec) -> str:
    """`auto`: tweets when no file is named; multilabel when label columns are; else by the header."""
    if spec.kind != "auto":
        if spec.kind not in KINDS:
            raise DataError(f"--dataset {spec.kind!r}: expected one of {KINDS}")
        return spec.kind
    if spec.path is None:
        return "tweets"
    if spec.label_columns:
        return "multilabel"
    header = _read_header(Path(spec.path), spec.encoding)
    if all(c in header for c in SO_COLUMNS):
        return "stackoverflow"
    if {"sentiment", "text"} <= set(header) and spec.label_column is None and spec.text_column is None:
        return "tweets"
    return "csv"


def load_dataset(spec: DataSpec) -> TextDataset:
    """Load whatever `spec` names; the returned dataset carries the (resolved) spec and file hash."""
    kind = detect_kind(spec)
    if kind != "tweets" and spec.path is None:
        raise DataError(f"--dataset {kind} needs --data FILE.csv")
    spec = dataclasses.replace(spec, kind=kind)
    if kind == "tweets":
        ds = load_tweets(spec.path, spec.tweets_task)
        spec = dataclasses.replace(ds.spec, tweets_task=spec.tweets_task)
    elif kind == "stackoverflow":
        ds = load_stackoverflow(spec.path, encoding=spec.encoding)
    elif kind == "multilabel":
        if not spec.label_columns:
            raise DataError("--dataset multilabel needs --label-columns a,b,c")
        ds = load_multilabel(spec.path, spec.text_column or "text", spec.label_columns, spec.encoding)
    else:
        ds = load_csv(spec.path, spec.text_column or "text", spec.label_column or "label",
                      spec.labels, spec.encoding)
        spec = dataclasses.replace(spec, labels=ds.label_names)
    file = Path(ds.spec.path).resolve()  # the loader just read it: relative paths are to the cwd
    ds.sha256 = sha256_of(file)
    ds.spec = dataclasses.replace(spec, path=_portable(file))
    return ds


def _portable(path) -> str:
    """Inside the repository: relative to its root (a clone elsewhere still finds it); else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


# ---- subsampling and the split ---------------------------------------------------------------
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
    _write_json(path, doc)
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
    digest = sha256_of(file)
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
            raise DataError(f"{path}: {s} rows {[_row(r) for r in missing[:5]]} are not in {file} as loaded now")
        parts[s] = ds.subset([position[int(r)] for r in rows[s]])
    return ds, parts


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


# ---- tokenization and batches ----------------------------------------------------------------
def load_tokenizer(folder):
    """The fast tokenizer saved in a checkpoint folder (local files only, no remote code)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not any((folder / n).exists() for n in ("tokenizer.json", "vocab.txt")):
        raise DataError(f"{folder}: no tokenizer.json or vocab.txt (a checkpoint folder carries its tokenizer)")
    tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True, trust_remote_code=False)
    if not tok.is_fast:
        raise DataError(f"{folder}: only a slow (Python) tokenizer could be built; a fast one needs tokenizer.json")
    return tok


def check_max_length(max_length: int, max_positions: int = MAX_LENGTH_LIMIT) -> int:
    limit = min(MAX_LENGTH_LIMIT, max_positions)
    if not 2 < max_length <= limit:
        raise DataError(f"--max-length {max_length}: must be between 3 and {limit} (the model's positions)")
    return max_length


def tokenize(tokenizer, texts: Sequence[str], max_length: int = 128) -> dict[str, torch.Tensor]:
    """Raw texts -> padded batch tensors (padded to the longest text, truncated keeping the head)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "token_type_ids": enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))}


class EncodedDataset:
    """A dataset tokenized once (truncated, unpadded); `collate` pads a batch to its longest text."""

    def __init__(self, ds: TextDataset, tokenizer, max_length: int = 128):
        self.data = ds
        enc = tokenizer(ds.texts, truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False, return_token_type_ids=False)
        self.ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
        self.lengths = np.array([len(x) for x in self.ids], dtype=np.int64)
        self.pad_id = tokenizer.pad_token_id or 0
        self.labels = torch.as_tensor(ds.labels)
        self.features = None if ds.features is None else torch.as_tensor(ds.features, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        T = int(self.lengths[idx].max())
        ids = np.full((len(idx), T), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), T), dtype=np.int64)
        for row, i in enumerate(idx):
            n = self.lengths[i]
            ids[row, :n], mask[row, :n] = self.ids[i], 1
        idx_t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                 "token_type_ids": torch.zeros((len(idx), T), dtype=torch.int64),
                 "labels": self.labels[idx_t], "index": idx_t}
        if self.features is not None:
            batch["features"] = self.features[idx_t]
        return batch

    def batches(self, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
                bucket: bool = True, bucket_batches: int = 50) -> list[np.ndarray]:
        """Index batches. Shuffled ones depend only on (seed, epoch), so a resumed run sees the same
        order. Bucketing sorts chunks of `bucket_batches` batches by length (less padding, still
        random); evaluation batches are fully length-sorted."""
        n = len(self)
        if not shuffle:
            order = np.argsort(self.lengths, kind="stable") if bucket else np.arange(n)
            return [order[i:i + batch_size] for i in range(0, n, batch_size)]
        rng = np.random.default_rng([seed, 3, epoch])
        order = rng.permutation(n)
        if not bucket:
            return [order[i:i + batch_size] for i in range(0, n, batch_size)]
        out = []
        chunk = batch_size * bucket_batches
        for c in range(0, n, chunk):
            part = order[c:c + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            out += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        return [out[i] for i in rng.permutation(len(out))]
