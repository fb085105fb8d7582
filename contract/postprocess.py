"""Logits -> probabilities and label names: the one post-process of the served `postprocess` model,
the benchmark's in-process baseline and the build's accuracy checks.

Single-label: probabilities = softmax, label = the name of the argmax.
Multi-label: probabilities = sigmoid, label = every name whose probability is above its threshold
(the checkpoint's `label_thresholds`, 0.5 where it has none), joined by "," ("" when none is).

Imports numpy only: the served postprocess model runs it inside Triton.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from contract.errors import UserError
from contract.names import LABEL, LABEL_FILE, LOGITS, PROBABILITIES

DEFAULT_THRESHOLD = 0.5


class PostprocessError(UserError, ValueError):
    """Thresholds that do not fit the labels, or logits of the wrong width."""


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


@dataclasses.dataclass(frozen=True)
class Postprocess:
    labels: tuple[str, ...]
    multi_label: bool = False
    thresholds: tuple[float, ...] = ()      # multi-label: one per label; empty = 0.5 each

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds)
                           or (DEFAULT_THRESHOLD,) * len(self.labels))
        if len(self.thresholds) != len(self.labels):
            raise PostprocessError(f"{len(self.thresholds)} thresholds for {len(self.labels)} labels")

    @classmethod
    def from_params(cls, labels, params) -> "Postprocess":
        """From the label names and a contract.params.PostprocessParams."""
        return cls(tuple(labels), params.multi_label, params.thresholds)

    def check(self, logits: np.ndarray) -> None:
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise PostprocessError(f"logits shape {logits.shape}, expected (n, {len(self.labels)})")

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits)
        self.check(logits)
        if self.multi_label:
            return sigmoid(logits.astype(np.float32))
        return softmax(logits.astype(np.float64)).astype(np.float32)

    def decisions(self, logits: np.ndarray) -> np.ndarray:
        """Single-label: (N,) class index. Multi-label: (N, L) 0/1 per label."""
        return self._decide(self.probabilities(logits))

    def _decide(self, probabilities: np.ndarray) -> np.ndarray:
        if not self.multi_label:
            return probabilities.argmax(-1)
        return (probabilities > np.asarray(self.thresholds, dtype=np.float32)).astype(np.int64)

    def label_names(self, decisions: np.ndarray) -> list[str]:
        if not self.multi_label:
            return [self.labels[j] for j in decisions]
        return [",".join(self.labels[j] for j in np.flatnonzero(row)) for row in decisions]

    def __call__(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """-> (logits float32, probabilities float32, label name per row)."""
        logits = np.asarray(logits).astype(np.float32)
        probabilities = self.probabilities(logits)
        return logits, probabilities, self.label_names(self._decide(probabilities))

    def tensors(self, logits: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
        """-> ({logits, probabilities, label: (N, 1) UTF-8 bytes}, label names): what a served model
        returns under the ensemble contract's output names, and the names for its metrics."""
        logits, probabilities, names = self(logits)
        labels = np.array([n.encode() for n in names], dtype=np.object_).reshape(-1, 1)
        return {LOGITS: logits, PROBABILITIES: probabilities, LABEL: labels}, names


def read_labels(path) -> list[str]:
    """Label names, one a line in index order (a model folder's labels.txt)."""
    from pathlib import Path
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def classifier_postprocess(model_dir, params) -> Postprocess | None:
    """The post-process a Python-backend classifier runs itself when its params (ClassifierParams)
    say `postprocess`, with the label names of labels.txt in `model_dir`; None when they do not."""
    if not params.postprocess:
        return None
    from pathlib import Path
    path = Path(model_dir) / LABEL_FILE
    try:
        return Postprocess.from_params(read_labels(path), params)
    except OSError as e:
        raise PostprocessError(f"{path}: cannot read the label names ({e.strerror})") from None
