"""Real held-out texts for the benchmarks: the test split a run saved, or a file the user names.

    texts = held_out_texts(run="artifacts/demo")                    # <run>/split.json, test part
    texts = held_out_texts(texts_file="my.csv", text_column="body", label_column="tag")
    texts.texts, texts.labels (label names, or None when the file has no labels)

The split is read by contract/split.py (`load_split`), so the benchmark scores exactly the texts that
training held out, and fails loudly if the data file changed since.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from clients.client import ClientError
from contract.data import load_csv, read_csv
from contract.split import load_split

SPLIT_NAMES = ("split.json",)


@dataclass
class HeldOut:
    texts: list[str]
    labels: list | None          # per text: a label name (single-label) or a list of names (multi-label)
    label_names: list[str] | None
    multi_label: bool
    source: str                  # where they came from, for the report

    def take(self, limit: int | None, seed: int = 0) -> "HeldOut":
        """At most `limit` texts, a fixed random sample (not the file's first rows, which may be sorted)."""
        if not limit or limit >= len(self.texts):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self.texts)), limit))
        return HeldOut([self.texts[i] for i in idx], None if self.labels is None else [self.labels[i] for i in idx],
                       self.label_names, self.multi_label, f"{self.source} (random {limit} of {len(self.texts)})")


def find_split(run: str | Path) -> Path:
    """<run>/split.json, or the one split.json somewhere below <run>."""
    run = Path(run)
    if run.is_file():
        return run
    for name in SPLIT_NAMES:
        if (run / name).is_file():
            return run / name
    found = sorted(run.rglob("split.json")) if run.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not run.exists():
        raise ClientError(f"run folder {run} does not exist (train first: `make train`, or pass "
                          "--texts FILE.csv --text-column ... --label-column ...)")
    raise ClientError(f"no single split.json under {run} (found {len(found)}): pass --split PATH, "
                      "or --texts FILE.csv --text-column ... --label-column ...")


def _from_split(path: Path, split: str = "test") -> HeldOut:
    _, parts = load_split(path)
    ds = parts[split]
    names = list(ds.label_names)
    if ds.multi_label:
        labels = [[n for n, v in zip(names, row) if v >= 0.5] for row in ds.labels]
    else:
        labels = [names[int(i)] for i in ds.labels]
    return HeldOut(list(ds.texts), labels, names, ds.multi_label, f"{path} ({split} split, {len(ds)} texts)")


def _from_file(path: Path, text_column: str, label_column: str | None, encoding: str) -> HeldOut:
    if not path.is_file():
        raise ClientError(f"--texts {path}: no such file")
    if path.suffix.lower() in (".txt", ".text"):
        if label_column:
            raise ClientError(f"--texts {path}: a .txt file (one text per line) has no --label-column")
        lines = path.read_text(encoding=encoding).splitlines()
        texts = [t for t in lines if t.strip()]
        if not texts:
            raise ClientError(f"--texts {path}: no non-blank lines")
        return HeldOut(texts, None, None, False, f"{path} ({len(texts)} lines)")
    if label_column:
        ds = load_csv(path, text_column, label_column, encoding=encoding)
        return HeldOut(list(ds.texts), [ds.label_names[int(i)] for i in ds.labels], list(ds.label_names),
                       False, f"{path} ({len(ds)} texts, columns {text_column}/{label_column})")
    df = read_csv(path, encoding)
    if text_column not in df.columns:
        raise ClientError(f"--texts {path}: no column {text_column!r}; the file has {list(df.columns)}")
    texts = [t for t in df[text_column].tolist() if t.strip()]
    if not texts:
        raise ClientError(f"--texts {path}: column {text_column!r} has no non-blank texts")
    return HeldOut(texts, None, None, False, f"{path} ({len(texts)} texts, column {text_column})")


def held_out_texts(run=None, split_path=None, texts_file=None, text_column="text", label_column=None,
                   encoding="utf-8", split: str = "test") -> HeldOut:
    """--texts FILE beats --split PATH beats --run DIR (its split.json)."""
    if texts_file:
        return _from_file(Path(texts_file), text_column, label_column, encoding)
    if split_path:
        return _from_split(Path(split_path), split)
    if run:
        return _from_split(find_split(run), split)
    raise ClientError("no texts: pass --run DIR (its split.json), --split PATH, or --texts FILE")


def add_text_arguments(p, run_default="artifacts/demo", limit: int | None = None, limit_help: str = "texts to use",
                       out: str | None = None):
    """The texts a command sends (--run/--split/--texts ...), with --limit (a default: `limit`) and,
    where the command writes a report, --out (default `out`)."""
    if out is not None:
        p.add_argument("--out", default=out, help=f"output folder (default {out})")
    g = p.add_argument_group("texts (real held-out texts; default: the test split of --run)")
    if limit is not None:
        g.add_argument("--limit", type=int, default=limit, help=f"{limit_help} (default {limit})")
    g.add_argument("--run", default=run_default, help=f"training run folder holding split.json (default {run_default})")
    g.add_argument("--split", help="a split.json file (overrides --run)")
    g.add_argument("--texts", help="a CSV (or .txt, one text per line) to use instead of the saved split")
    g.add_argument("--text-column", default="text", help="--texts CSV: the text column (default text)")
    g.add_argument("--label-column", help="--texts CSV: the label column (needed for accuracy)")
    g.add_argument("--encoding", default="utf-8", help="--texts file encoding (default utf-8)")


def texts_from_args(args) -> HeldOut:
    return held_out_texts(run=args.run, split_path=args.split, texts_file=args.texts,
                          text_column=args.text_column, label_column=args.label_column, encoding=args.encoding)
