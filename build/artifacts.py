"""What the build stages share: held-out examples, tokenization, model loading, atomic outputs.

The build reads files only (a checkpoint folder, the dataset and its saved split) and writes each
stage's output folder through a temp folder that is renamed at the end (contract/files.py), so an
interrupted stage leaves the previous output intact. Texts are tokenized and logits turned into
labels by the contract's encoder and post-process, the same code the served models run.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from contract.encoder import TextEncoder, checkpoint_pad_id, load_tokenizer_file
from contract.errors import UserError
from contract.files import atomic_dir
from contract.names import DEFAULT_MAX_LENGTH, LABEL_FILE, TOKENIZER_FILES
from contract.postprocess import Postprocess
from contract.split import load_split
from contract.tables import markdown_table

__all__ = [  # what the build stages import from here (atomic_dir, markdown_table: the contract's)
    "BuildError", "Examples", "load_examples", "Encoder", "length_sorted", "batches", "predictions", "accuracy",
    "load_model", "copy_checkpoint_metadata", "atomic_dir", "markdown_table", "add_data_arguments", "split_path",
    "examples_from_args"]


class BuildError(UserError, RuntimeError):
    """A build stage that cannot go on; the message is one line naming the file or value at fault."""


# ---- examples ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Examples:
    """Texts with their gold labels (class index, or a 0/1 row per text for multi-label) and, for
    tabular models, their raw numeric features (N, k)."""
    texts: list[str]
    labels: list
    features: np.ndarray | None = None

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise BuildError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if self.features is not None and len(self.features) != len(self.texts):
            raise BuildError(f"{len(self.texts)} texts but {len(self.features)} feature rows")

    def __len__(self):
        return len(self.texts)

    def subset(self, idx) -> "Examples":
        return Examples([self.texts[i] for i in idx], [self.labels[i] for i in idx],
                        None if self.features is None else self.features[np.asarray(idx, dtype=np.int64)])

    def sample(self, n: int | None, seed: int = 0) -> "Examples":
        """n texts drawn at random (in their original order): files are often sorted by label."""
        if n is None or n >= len(self):
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))


def load_examples(split_file: str | Path, data: str | Path | None = None, parts=("train", "val", "test"),
                  limit: int | None = None) -> dict[str, Examples]:
    """The parts of a run's saved split (training's split.json) as Examples (`limit`: a random sample).

    The split names the dataset file and how it was loaded; `contract.split.load_split` reloads it
    and checks that the file is still the same (sha256). `data` points at the file if it moved.
    """
    _, splits = load_split(split_file, data)
    out = {}
    for part in parts:
        ds = splits[part]
        labels = [row.tolist() if ds.multi_label else int(row) for row in ds.labels]
        out[part] = Examples(list(ds.texts), labels, ds.features).sample(limit)
    return out


# ---- tokenization --------------------------------------------------------------------------------
class Encoder(TextEncoder):
    """The checkpoint's text encoder: its tokenizer.json and pad id, the served tokenizer's padding."""

    def __init__(self, folder: str | Path, max_length: int = DEFAULT_MAX_LENGTH):
        tokenizer = load_tokenizer_file(folder)
        super().__init__(tokenizer, max_length, checkpoint_pad_id(folder, tokenizer))


def length_sorted(examples: Examples) -> tuple[Examples, np.ndarray]:
    """The examples ordered by text length (batches padded to their longest then waste little), and
    the permutation: results computed in sorted order go back with `out[order] = sorted_out`."""
    order = np.argsort([len(t) for t in examples.texts], kind="stable")
    return examples.subset(order), order


def batches(examples: Examples, encoder: Encoder, batch_size: int):
    """Yield (inputs dict of int64 arrays [+ float32 features], labels slice), in order."""
    for i in range(0, len(examples), batch_size):
        feeds = encoder(examples.texts[i:i + batch_size])
        if examples.features is not None:
            feeds["features"] = np.asarray(examples.features[i:i + batch_size], dtype=np.float32)
        yield feeds, examples.labels[i:i + batch_size]


# ---- predictions ---------------------------------------------------------------------------------
def predictions(logits: np.ndarray, multi_label: bool, thresholds=()) -> np.ndarray:
    """Class index per text, or a 0/1 row per text (multi-label), as the served post-process decides."""
    labels = tuple(str(i) for i in range(np.shape(logits)[-1]))
    return Postprocess(labels, multi_label, thresholds).decisions(logits)


def accuracy(pred: np.ndarray, labels) -> float:
    """Share of correct labels (multi-label: of correct label decisions)."""
    return float((pred == np.asarray(labels)).mean()) if len(pred) else float("nan")


# ---- models --------------------------------------------------------------------------------------
def load_model(checkpoint: str | Path, adapter: str | Path | None = None):
    """Our BERT from a checkpoint folder, in eval mode, with a LoRA adapter merged in if given."""
    from training.lora import load_adapter, merge_and_unload
    from training.model import BertForSequenceClassification

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").exists():
        raise BuildError(f"{checkpoint}: not a checkpoint folder (no config.json)")
    try:
        model = BertForSequenceClassification.from_pretrained(checkpoint)
        if adapter is not None:
            load_adapter(model, adapter)
            merge_and_unload(model)
    except (ValueError, FileNotFoundError) as e:   # ConfigError, CheckpointError, a bad adapter file
        raise BuildError(str(e).splitlines()[0]) from None
    return model.eval()


def copy_checkpoint_metadata(checkpoint: str | Path, dst: str | Path) -> None:
    """config.json, label names and tokenizer files: what a stage's output needs to stand alone."""
    for name in ("config.json", LABEL_FILE, *TOKENIZER_FILES):
        if (Path(checkpoint) / name).exists():
            shutil.copy2(Path(checkpoint) / name, Path(dst) / name)


# ---- command-line helpers shared by the stages ---------------------------------------------------
def add_data_arguments(p) -> None:
    p.add_argument("--split", type=Path, default=None,
                   help="split.json with train/val/test row indices (default: split.json beside the checkpoint folder)")
    p.add_argument("--data", type=Path, default=None, help="the dataset file, if it moved since the split was saved")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per text (truncation)")


def split_path(args, checkpoint: str | Path) -> Path:
    return Path(args.split) if args.split else Path(checkpoint).parent / "split.json"


def examples_from_args(args, parts, limit: int | None = None, checkpoint: str | Path | None = None) -> dict[str, Examples]:
    checkpoint = Path(checkpoint or args.checkpoint)
    if not (checkpoint / "config.json").exists():
        raise BuildError(f"{checkpoint}: not a checkpoint folder (no config.json)")
    return load_examples(split_path(args, checkpoint or args.checkpoint), args.data, parts, limit)
