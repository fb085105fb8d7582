"""Tokenized training batches (torch). The datasets, their loaders and the saved split are torch-free
and live in contract/data.py and contract/split.py; they are re-exported here for training's modules.

Tokenization is the contract's one text encoder (contract/encoder.py): the same ids, masks and
padding as the served tokenizer, so a model is evaluated on exactly what it will be served.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from contract.data import (KINDS, SO_COLUMNS, SO_FEATURES, TWEET_CLASSES, DataError, DataSpec, DataWarning,
                           TextDataset, detect_kind, load_csv, load_dataset, load_multilabel, load_stackoverflow,
                           load_tweets, portable_path)
from contract.encoder import TextEncoder, check_max_length
from contract.names import DEFAULT_MAX_LENGTH, MAX_POSITIONS as MAX_LENGTH_LIMIT
from contract.split import SPLIT_FRACTIONS, SPLITS, load_split, make_split, save_split, stratified_subsample

__all__ = [  # torch-free names re-exported from the contract, then this module's own
    "KINDS", "SO_COLUMNS", "SO_FEATURES", "TWEET_CLASSES", "DataError", "DataSpec", "DataWarning", "TextDataset",
    "detect_kind", "load_csv", "load_dataset", "load_multilabel", "load_stackoverflow", "load_tweets",
    "portable_path", "TextEncoder", "check_max_length", "DEFAULT_MAX_LENGTH", "MAX_LENGTH_LIMIT",
    "SPLIT_FRACTIONS", "SPLITS", "load_split", "make_split", "save_split", "stratified_subsample",
    "load_tokenizer", "tokenize", "EncodedDataset"]


def load_tokenizer(folder, max_length: int = DEFAULT_MAX_LENGTH) -> TextEncoder:
    """The text encoder of a checkpoint folder (its tokenizer.json, else vocab.txt, and pad id)."""
    return TextEncoder.from_folder(Path(folder), max_length)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def tokenize(encoder: TextEncoder, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """Raw texts -> one padded batch of tensors (the encoder's padding rule), truncated keeping the head."""
    return _tensors(encoder.with_max_length(max_length)(texts))


class EncodedDataset:
    """A dataset tokenized once (truncated, unpadded); `collate` pads a batch as the encoder pads one call."""

    def __init__(self, ds: TextDataset, encoder: TextEncoder, max_length: int = DEFAULT_MAX_LENGTH):
        self.data = ds
        self.encoder = encoder.with_max_length(max_length)
        self.ids = self.encoder.tokenize(ds.texts)
        self.lengths = np.array([len(x) for x in self.ids], dtype=np.int64)
        self.labels = torch.as_tensor(ds.labels)
        self.features = None if ds.features is None else torch.as_tensor(ds.features, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = _tensors(self.encoder.pad([self.ids[i] for i in idx]))
        idx_t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        batch.update(labels=self.labels[idx_t], index=idx_t)
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
