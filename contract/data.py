"""Datasets: the CSV loaders every stage reads texts with (numpy + pandas, no torch).

Every loader returns a `TextDataset` (texts, integer labels or multi-hot label rows, optional tabular
features, label names, problem type), whatever the file's schema:

- `stackoverflow`: Kaggle's closed-question `train-sample.csv` (title + body, open vs closed, five
  numeric features);
- `csv`: any CSV with a text column and a label column;
- `multilabel`: a CSV with several 0/1 label columns (e.g. Jigsaw toxic comments' `train.csv`);
- `tweets`: the bundled tweets (data/tweets.csv, `python -m training fetch`), negative vs positive
  or three classes.

Row numbers in messages count the header as row 1, as a spreadsheet shows them (a quoted field that
spans several lines is still one row); split files store 0-based record indices (row number - 2),
the positions `pandas.read_csv` gives the rows. Bad input is an error naming the file, row, column
and value; rows with empty text are dropped with a warning that counts them, never silently.
The saved 80/10/10 split that every later stage reads back is in contract/split.py.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from contract.errors import UserError
from contract.files import sha256_file

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
TWEETS_PATH = REPO_ROOT / "data" / "tweets.csv"     # `python -m training fetch` puts it there

KINDS = ("auto", "tweets", "stackoverflow", "csv", "multilabel")

SO_COLUMNS = ("PostId", "PostCreationDate", "OwnerUserId", "OwnerCreationDate", "ReputationAtPostCreation",
              "OwnerUndeletedAnswerCountAtPostTime", "Title", "BodyMarkdown", "Tag1", "Tag2", "Tag3", "Tag4",
              "Tag5", "PostClosedDate", "OpenStatus")
SO_CLOSE_REASONS = ("not a real question", "not constructive", "off topic", "too localized")
SO_FEATURES = ("account_age_days", "num_tags", "reputation", "title_words", "body_words")
SO_DATE_FORMATS = ("%m/%d/%Y %H:%M:%S", "ISO8601")

TWEET_CLASSES = ("negative", "neutral", "positive")


class DataError(UserError, ValueError):
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


def read_csv(path: Path, encoding: str = "utf-8"):
    """Every column of a CSV as strings (empty cells ""), or a DataError naming the file."""
    df = _pandas_read(Path(path), encoding)
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


def row_number(record: int) -> int:
    """The row number a person sees: the header is row 1, the first record row 2."""
    return int(record) + 2


def _drop_empty_texts(texts: list[str], rows: np.ndarray, path: Path) -> np.ndarray:
    """Boolean mask of rows to keep; warns with the count and the first row numbers of the dropped."""
    keep = np.array([bool(t.strip()) for t in texts], dtype=bool)
    n = int((~keep).sum())
    if n:
        first = ", ".join(str(row_number(r)) for r in rows[~keep][:5])
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
            raise DataError(f"{path}: row {row_number(rows[j])}: {what} in column {column!r} (expected one of {list(names)})")
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
    df = read_csv(path, encoding)
    _require_columns(df, path, [text_column, label_column])
    rows = _row_numbers(df)
    texts = df[text_column].tolist()
    keep = _drop_empty_texts(texts, rows, path)
    texts, rows = [t for t, k in zip(texts, keep) if k], rows[keep]
    values = [v.strip() for v in df[label_column].to_numpy()[keep]]
    if labels is None:
        for j, v in enumerate(values):
            if v == "":
                raise DataError(f"{path}: row {row_number(rows[j])}: empty label in column {label_column!r}")
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
    df = read_csv(path, encoding)
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
                raise DataError(f"{path}: row {row_number(rows[j])}: column {col!r} must be 0 or 1, got {v!r}")
            labels[j, c] = x
    spec = spec or DataSpec(kind="multilabel", path=str(path), text_column=text_column,
                            label_columns=label_columns, encoding=encoding)
    return TextDataset(texts, labels, label_columns, "multi_label_classification", rows, spec=spec)


def load_tweets(path=None, task: str = "binary", spec: DataSpec | None = None) -> TextDataset:
    """The bundled tweets (latin-1; columns sentiment,confidence,text). `binary` keeps negative vs
    positive and drops neutral (counted in the log); `3class` keeps all three."""
    if task not in ("binary", "3class"):
        raise DataError(f"--tweets-task {task!r}: expected binary or 3class")
    path = Path(path) if path is not None else TWEETS_PATH
    if not path.exists() and path == TWEETS_PATH:
        raise DataError(f"{path} is missing: `python -m training fetch` downloads the bundled tweets")
    df = read_csv(path, "latin-1")
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
    df = read_csv(path, encoding)
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
            raise DataError(f"{path}: row {row_number(rows[j])}: column {col!r} is not a date: {raw.iloc[j]!r} "
                            f"(expected like 07/31/2008 21:42:52)")
        return parsed

    age_days = (dates("PostCreationDate") - dates("OwnerCreationDate")).dt.total_seconds().to_numpy() / 86400.0
    reputation = pd.to_numeric(df["ReputationAtPostCreation"].str.strip(), errors="coerce").to_numpy()
    bad = np.flatnonzero(np.isnan(reputation) & keep)
    if len(bad):
        j = bad[0]
        raise DataError(f"{path}: row {row_number(rows[j])}: column 'ReputationAtPostCreation' is not a number: "
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
    ds.sha256 = sha256_file(file)
    ds.spec = dataclasses.replace(spec, path=portable_path(file))
    return ds


def portable_path(path) -> str:
    """Inside the repository: relative to its root (a clone elsewhere still finds it); else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)
