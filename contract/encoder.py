"""One text encoder for every stage: training's batches, the build's checks, the served tokenizer,
the benchmark's in-process baseline.

It runs the checkpoint's tokenizer.json with the `tokenizers` library and applies the serving rules:

- a text arrives as str or as UTF-8 bytes; invalid UTF-8 becomes U+FFFD instead of an error;
- each text is cut to `max_text_chars` characters before it is tokenized. The tokenizer reads a
  whole text before truncating it, so without the cut one request of megabyte texts would hold the
  tokenizer (and every ensemble behind it) for seconds per text. At 64 characters per token
  (English averages ~5) the cut falls far beyond the tokens that are kept;
- truncation keeps the head: [CLS] + the first max_length - 2 tokens + [SEP];
- every text of one call is padded to the longest of them, rounded up to a multiple of 8 and
  capped at max_length, with the checkpoint's pad id. One shape per call is what lets Triton's
  dynamic batcher merge the requests behind it; padding to a fixed 128 would spend most of the
  compute on [PAD] for tweets (~30 tokens).

Imports numpy and tokenizers only: the served tokenizer model runs it inside Triton.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from contract.errors import UserError
from contract.names import CHARS_PER_TOKEN, DEFAULT_MAX_LENGTH, MAX_POSITIONS, PAD_MULTIPLE, TEXT_INPUTS, TOKENIZER_FILE


class TokenizerError(UserError, ValueError):
    """A folder without a usable tokenizer, or a max length the model cannot take."""


def decode_text(value) -> str:
    """A text as str: UTF-8 bytes are decoded with invalid sequences replaced by U+FFFD."""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    raise TypeError(f"expected str or bytes, got {type(value).__name__}")


def padded_length(longest: int, multiple: int, max_length: int) -> int:
    """The longest text's length rounded up to `multiple`, never beyond max_length."""
    return min(max_length, -(-max(1, longest) // max(1, multiple)) * max(1, multiple))


def check_max_length(max_length: int, max_positions: int = MAX_POSITIONS) -> int:
    limit = min(MAX_POSITIONS, max_positions)
    if not 2 < max_length <= limit:
        raise TokenizerError(f"--max-length {max_length}: must be between 3 and {limit} (the model's positions)")
    return max_length


def _wordpiece_from_vocab(folder: Path):
    """A BERT WordPiece tokenizer from vocab.txt (+ tokenizer_config.json's do_lower_case), for
    checkpoints saved without tokenizer.json; the same pieces transformers builds for them."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    config = folder / "tokenizer_config.json"
    lower = json.loads(config.read_text()).get("do_lower_case", True) if config.is_file() else True
    tok = Tokenizer(models.WordPiece.from_file(str(folder / "vocab.txt"), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lower)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = {t: tok.token_to_id(t) for t in ("[CLS]", "[SEP]")}
    if None in specials.values():
        raise TokenizerError(f"{folder}/vocab.txt has no [CLS] or [SEP]: not a BERT vocabulary")
    tok.post_processor = processors.BertProcessing(("[SEP]", specials["[SEP]"]), ("[CLS]", specials["[CLS]"]))
    tok.decoder = decoders.WordPiece()
    return tok


def load_tokenizer_file(folder: str | Path):
    """The `tokenizers.Tokenizer` of a checkpoint folder (tokenizer.json, else vocab.txt), or a
    tokenizer.json path."""
    from tokenizers import Tokenizer

    path = Path(folder)
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if (path / TOKENIZER_FILE).is_file():
        return Tokenizer.from_file(str(path / TOKENIZER_FILE))
    if (path / "vocab.txt").is_file():
        return _wordpiece_from_vocab(path)
    raise TokenizerError(f"{folder}: no tokenizer.json or vocab.txt (a checkpoint folder carries its tokenizer)")


def checkpoint_pad_id(folder: str | Path, tokenizer=None) -> int:
    """The pad id a checkpoint's model was trained with: config.json's pad_token_id, else the
    tokenizer's [PAD], else 0."""
    config = Path(folder) / "config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("pad_token_id")
        if isinstance(value, int):
            return value
    pad = tokenizer.token_to_id("[PAD]") if tokenizer is not None else None
    return 0 if pad is None else int(pad)


class TextEncoder:
    """Texts -> input_ids, attention_mask, token_type_ids (int64, (N, T)) under the serving rules."""

    def __init__(self, tokenizer, max_length: int = DEFAULT_MAX_LENGTH, pad_token_id: int = 0,
                 pad_multiple: int = PAD_MULTIPLE, max_text_chars: int = 0):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_token_id = int(pad_token_id)
        self.pad_multiple = int(pad_multiple)
        self.max_text_chars = int(max_text_chars) or CHARS_PER_TOKEN * self.max_length
        tokenizer.no_padding()                      # padded per call, below
        tokenizer.enable_truncation(self.max_length, direction="right")

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int = DEFAULT_MAX_LENGTH, **options) -> "TextEncoder":
        """The encoder of a checkpoint folder: its tokenizer and its pad id."""
        tokenizer = load_tokenizer_file(folder)
        options.setdefault("pad_token_id", checkpoint_pad_id(folder, tokenizer))
        return cls(tokenizer, max_length, **options)

    @classmethod
    def from_params(cls, tokenizer_json: str | Path, params) -> "TextEncoder":
        """The served tokenizer's encoder: tokenizer.json and its TokenizerParams."""
        return cls(load_tokenizer_file(tokenizer_json), params.max_length, params.pad_token_id,
                   params.pad_to_multiple_of, params.text_chars)

    def with_max_length(self, max_length: int) -> "TextEncoder":
        if max_length == self.max_length:
            return self
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(self.tokenizer.to_str())
        return TextEncoder(copy, max_length, self.pad_token_id, self.pad_multiple)

    def texts(self, values: Sequence) -> list[str]:
        """str or bytes values -> the texts that get tokenized (decoded, cut to max_text_chars)."""
        return [decode_text(v)[:self.max_text_chars] for v in values]

    def tokenize(self, values: Sequence) -> list[np.ndarray]:
        """Each text's token ids, truncated, unpadded ([CLS] ... [SEP])."""
        return self.tokenize_and_count_cuts(values)[0]

    def tokenize_and_count_cuts(self, values: Sequence) -> tuple[list[np.ndarray], int]:
        """tokenize(), and how many of the texts lost their tail to max_length."""
        encodings = self.tokenizer.encode_batch(self.texts(values))
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings], sum(bool(e.overflowing) for e in encodings)

    def pad(self, ids: Sequence[np.ndarray], length: int | None = None) -> dict[str, np.ndarray]:
        """One (N, T) batch: T = the longest row rounded up to pad_multiple, capped at max_length
        (or `length`); attention_mask 1 on real tokens; token_type_ids 0 (one sequence per text)."""
        T = length or padded_length(max((len(x) for x in ids), default=1), self.pad_multiple, self.max_length)
        input_ids = np.full((len(ids), T), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), T), dtype=np.int64)
        for row, x in enumerate(ids):
            n = min(len(x), T)
            input_ids[row, :n], mask[row, :n] = x[:n], 1
        return {TEXT_INPUTS[0]: input_ids, TEXT_INPUTS[1]: mask, TEXT_INPUTS[2]: np.zeros_like(input_ids)}

    def __call__(self, values: Sequence) -> dict[str, np.ndarray]:
        return self.pad(self.tokenize(values))

    def lengths(self, values: Sequence) -> list[int]:
        """Tokens per text after truncation, [CLS]/[SEP] included, no padding."""
        return [len(x) for x in self.tokenize(values)]

    def get_vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()
