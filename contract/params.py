"""The parameters of the served Python models, typed and defined once.

build/model_configs.py writes them into config.pbtxt (`to_parameters`); each served model reads them
back from the JSON model config Triton hands its initialize() (`from_model_config`); the benchmark
reads the same from config.pbtxt on disk. Every value travels as Triton's `string_value`; the type
of each field's default says how to read it back. A key the dataclass does not know is an error,
so a misspelt parameter fails when the model loads instead of being ignored.
"""
from __future__ import annotations

import dataclasses
import json

from contract.errors import UserError
from contract.names import CHARS_PER_TOKEN, DEFAULT_CHUNK_ROWS, DEFAULT_MAX_LENGTH, PAD_MULTIPLE


class ParameterError(UserError, ValueError):
    """A model config whose parameters do not fit the model; the message names the key and value."""


def parameters_of(model_config) -> dict[str, str]:
    """The string parameters of a model config: Triton's JSON (a str or dict, as a served model's
    initialize() gets it) or a ModelConfig message (read from config.pbtxt)."""
    if isinstance(model_config, (str, bytes)):
        model_config = json.loads(model_config)
    if isinstance(model_config, dict):
        return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}
    return {k: v.string_value for k, v in model_config.parameters.items()}


def _to_string(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(repr(float(v)) for v in value)
    return str(value)


def _from_string(text: str, default, key: str):
    try:
        if isinstance(default, bool):
            if text.strip().lower() not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            return text.strip().lower() in ("true", "1")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, tuple):
            return tuple(float(t) for t in text.split(",") if t.strip())
        return text
    except ValueError as e:
        raise ParameterError(f"parameter {key}={text!r}: {e}") from None


class _Parameters:
    def to_parameters(self) -> dict[str, str]:
        return {f.name: _to_string(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_parameters(cls, params: dict[str, str]):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise ParameterError(f"{cls.__name__}: unknown parameter(s) {unknown}; known: {sorted(fields)}")
        return cls(**{k: _from_string(v, fields[k].default, k) for k, v in params.items()})

    @classmethod
    def from_model_config(cls, model_config):
        return cls.from_parameters(parameters_of(model_config))


@dataclasses.dataclass(frozen=True)
class TokenizerParams(_Parameters):
    """The `tokenizer` model: text -> token ids, padded as encoder.TextEncoder pads."""
    max_length: int = DEFAULT_MAX_LENGTH
    pad_to_multiple_of: int = PAD_MULTIPLE
    pad_token_id: int = 0
    max_text_chars: int = 0            # characters kept per text; 0: CHARS_PER_TOKEN x max_length
    max_request_bytes: int = 0         # a request's texts together, before UTF-8 decoding; 0: no limit

    @property
    def text_chars(self) -> int:
        return self.max_text_chars or CHARS_PER_TOKEN * self.max_length


@dataclasses.dataclass(frozen=True)
class ClassifierParams(_Parameters):
    """A Python-backend classifier (ONNX Runtime or PyTorch): token ids -> logits, and with
    `postprocess` also probabilities and label (postprocess.py, labels.txt beside config.pbtxt),
    so that its ensemble needs no separate post-process model."""
    model_file: str = "model.onnx"     # in the version folder: the ONNX file, or the checkpoint folder
    threads: int = 0                   # cores to use, 0 = every core of the machine
    pad_token_id: int = 0              # pads requests of different lengths to one batch
    precision: str = "fp32"
    sort_chunk_rows: int = DEFAULT_CHUNK_ROWS   # > 0: length-sorted chunks (batching.py); 0: whole batch
    allow_spinning: bool = False       # ONNX Runtime: idle threads spin (True) or sleep
    postprocess: bool = False          # also return probabilities and label, as PostprocessParams decide
    multi_label: bool = False          # with postprocess: as PostprocessParams
    thresholds: tuple[float, ...] = ()  # with postprocess: as PostprocessParams
    # what a request may carry (batching.gather checks it; 0 = unchecked): one id outside the
    # embedding tables or a row longer than the position table would fail every request merged
    # into the same execution
    vocab_size: int = 0                # input_ids in [0, vocab_size)
    type_vocab_size: int = 0           # token_type_ids in [0, type_vocab_size)
    max_length: int = 0                # tokens per row, at most


@dataclasses.dataclass(frozen=True)
class PostprocessParams(_Parameters):
    """The `postprocess` model: raw logits -> logits, probabilities, label (postprocess.py)."""
    multi_label: bool = False
    thresholds: tuple[float, ...] = ()   # multi-label: one per label; empty = 0.5 each
