"""BertConfig: the model's hyper-parameters, read from and written to Hugging Face `config.json`.

Only the fields this BERT uses are typed; any other key in a config.json (transformers_version,
gradient_checkpointing, ...) is kept in `extra` and written back untouched, so a round trip through
our code loses nothing a Hugging Face tool might want.

No torch here: the build, the benchmark and the clients read a checkpoint's labels, thresholds,
pad id and size (for FLOP counts) without loading the model; training/model.py builds it from this.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from contract.errors import UserError
from contract.files import atomic_write_text


class ConfigError(UserError, ValueError):
    """A config.json that this BERT cannot use; the message names the file and the field."""


@dataclasses.dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    # classification head
    id2label: dict[int, str] = dataclasses.field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    problem_type: str = "single_label_classification"  # or "multi_label_classification"
    # tabular variant: numeric features concatenated with the pooled output before the classifier;
    # the standardisation statistics travel with the checkpoint and are applied inside the model.
    num_tabular_features: int = 0
    tabular_mean: list[float] | None = None
    tabular_std: list[float] | None = None
    tabular_feature_names: list[str] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")
    ACTIVATIONS = ("gelu", "relu", "gelu_new", "gelu_pytorch_tanh")

    def __post_init__(self):
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ConfigError(f"id2label keys must be 0..{len(self.id2label) - 1}, got {sorted(self.id2label)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}")
        if self.problem_type not in self.PROBLEM_TYPES:
            raise ConfigError(f"problem_type {self.problem_type!r} is not one of {self.PROBLEM_TYPES}")
        if self.hidden_act not in self.ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not one of {self.ACTIVATIONS}")
        k = self.num_tabular_features
        for name in ("tabular_mean", "tabular_std"):
            stats = getattr(self, name)
            if stats is not None and len(stats) != k:
                raise ConfigError(f"{name} has {len(stats)} values but num_tabular_features is {k}")

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label_classification"

    @property
    def label_thresholds(self) -> tuple[float, ...]:
        """Multi-label decision thresholds, one per label, from config.json's `label_thresholds`
        (a list, or one number for every label); () when it has none (0.5 each)."""
        value = self.extra.get("label_thresholds") or ()
        if isinstance(value, (int, float)):
            value = [value] * self.num_labels
        if len(value) not in (0, self.num_labels):
            raise ConfigError(f"label_thresholds has {len(value)} values for {self.num_labels} labels")
        return tuple(float(t) for t in value)

    def flops_per_token(self) -> float:
        """Forward multiply-adds x2 per token in the encoder's dense layers, 2 x L(4C^2 + 2CI):
        Q, K, V, attention output (4 C x C) and the feed-forward pair (2 C x I); attention scores
        and embeddings excluded."""
        C, I, L = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        return 2.0 * L * (4 * C * C + 2 * C * I)

    def with_labels(self, labels: list[str], problem_type: str | None = None) -> "BertConfig":
        return dataclasses.replace(self, id2label=dict(enumerate(labels)),
                                   problem_type=problem_type or self.problem_type)

    # ---- Hugging Face config.json -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "BertConfig":
        model_type = d.get("model_type", "bert")
        if model_type != "bert":
            raise ConfigError(
                f"{source}: model_type is {model_type!r}; this project implements BERT only "
                f"(RoBERTa, DistilBERT, ... have other embeddings/layer names). Use a BERT checkpoint.")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{source}: position_embedding_type {d['position_embedding_type']!r} is not supported")
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in fields}
        extra = {k: v for k, v in d.items() if k not in fields and k not in _DERIVED_KEYS}
        if "id2label" not in known and "num_labels" in d:
            known["id2label"] = {i: f"LABEL_{i}" for i in range(int(d["num_labels"]))}
        if known.get("problem_type") is None:
            known.pop("problem_type", None)
        try:
            return cls(**known, extra=extra)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                d[f.name] = getattr(self, f.name)
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        d["label2id"] = self.label2id
        d["model_type"] = "bert"
        d["architectures"] = ["BertForSequenceClassification"]
        d["position_embedding_type"] = "absolute"
        if not self.num_tabular_features:  # keep plain checkpoints free of our tabular keys
            for k in ("num_tabular_features", "tabular_mean", "tabular_std", "tabular_feature_names"):
                d.pop(k)
        return d

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file (a checkpoint folder needs config.json)") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))

    def to_json_file(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


# Keys that transformers writes but that are derived from our fields (we recompute them).
_DERIVED_KEYS = {"label2id", "num_labels", "model_type", "architectures", "position_embedding_type"}
