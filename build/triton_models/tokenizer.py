"""Triton Python-backend model `tokenizer`: text -> input_ids, attention_mask, token_type_ids.

Version folder: model.py (this file) and tokenizer.json (the checkpoint's fast tokenizer, run by
the `tokenizers` library). Parameters: max_length (default 128), pad_to_multiple_of (8),
pad_token_id (0), max_text_chars (default 64 x max_length).

Each text is cut to max_text_chars characters before it is tokenized: the tokenizer reads a whole
text before truncating it to max_length tokens (a 1 MB text took ~4 s here), so without the cap a
request of long texts would hold the tokenizer, and every ensemble behind it, for minutes. At 64
characters per token (English averages ~5) the cut falls far beyond the tokens that are kept.

Padding is per execution, not per request and not fixed: all texts of every request that the
dynamic batcher handed one execute() are padded together to the longest of them, rounded up to
a multiple of 8 and capped at max_length. Padding to a fixed 128 would spend most of the compute
on [PAD] for tweets (~30 tokens); padding each request alone would give requests of one batch
different shapes, which the classifier's dynamic batcher cannot merge.
"""
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # contract_metrics.py beside this file
import contract_metrics  # noqa: E402


def padded_length(longest, multiple, max_length):
    return min(max_length, -(-longest // multiple) * multiple)


def decode(value):
    """A BYTES element -> str; invalid UTF-8 becomes U+FFFD instead of failing the request."""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    raise TypeError(f"expected bytes, got {type(value).__name__}")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_length = int(params.get("max_length", "128"))
        self.multiple = int(params.get("pad_to_multiple_of", "8"))
        self.pad_token_id = int(params.get("pad_token_id", "0"))
        self.max_chars = int(params.get("max_text_chars", str(64 * self.max_length)))
        path = Path(args["model_repository"]) / args["model_version"] / "tokenizer.json"
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()  # we pad per execution, below
        # long texts keep their head ([CLS] ... [SEP] still added by the post-processor)
        self.tokenizer.enable_truncation(self.max_length, direction="right")
        self.metrics = contract_metrics.ModelMetrics(pb_utils, args, contract_metrics.TOKENIZER)

    def execute(self, requests):
        texts, owners, errors = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                column = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()  # (n, 1)
                decoded = [decode(v)[:self.max_chars] for v in column.reshape(-1)]
            except Exception as e:
                errors[i] = f"tokenizer: request {i} of this batch has an unreadable 'text' input: {e}"
                continue
            texts.extend(decoded)
            owners.extend([i] * len(decoded))

        encodings = self._encode(texts, owners, errors)
        good = [e for e, owner in zip(encodings, owners) if errors[owner] is None]
        self.metrics.tokenized((len(e.ids) for e in good), sum(bool(e.overflowing) for e in good))
        T = padded_length(max((len(e.ids) for e in good), default=1), self.multiple, self.max_length)

        responses = []
        for i in range(len(requests)):
            if errors[i] is not None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[],
                                                            error=pb_utils.TritonError(errors[i])))
                continue
            mine = [e for e, owner in zip(encodings, owners) if owner == i]
            ids = np.full((len(mine), T), self.pad_token_id, dtype=np.int64)
            mask = np.zeros((len(mine), T), dtype=np.int64)
            types = np.zeros((len(mine), T), dtype=np.int64)
            for row, e in enumerate(mine):
                n = len(e.ids)
                ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("input_ids", ids),
                pb_utils.Tensor("attention_mask", mask),
                pb_utils.Tensor("token_type_ids", types),
            ]))
        return responses

    def _encode(self, texts, owners, errors):
        """One call for the whole execution; if it fails, per request, so one bad request fails alone."""
        try:
            return self.tokenizer.encode_batch(texts)
        except Exception:
            pass
        encodings = []
        for text, owner in zip(texts, owners):
            try:
                encodings.append(self.tokenizer.encode(text))
            except Exception as e:
                errors[owner] = errors[owner] or f"tokenizer: request {owner} of this batch: {e}"
                encodings.append(None)
        return encodings
