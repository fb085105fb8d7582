"""Triton Python-backend model `tokenizer`: text -> input_ids, attention_mask, token_type_ids.

Version folder: model.py (this file), tokenizer.json (the checkpoint's fast tokenizer) and contract/
(a copy of the project's contract package). Parameters: contract.params.TokenizerParams.

The encoding is contract.encoder.TextEncoder, the one every stage uses (invalid UTF-8 -> U+FFFD,
each text cut to max_text_chars, truncation keeping the head). Padding is per execution, not per
request and not fixed: all texts of every request that the dynamic batcher handed one execute()
are padded together to the longest of them, rounded up to a multiple of 8 and capped at
max_length, so the requests behind it reach the classifier with one shape and merge there.

A request whose texts hold more than max_request_bytes bytes together is refused before any of
them is decoded from UTF-8 or tokenized (INVALID_ARG: HTTP 400, gRPC INVALID_ARGUMENT). Triton 2.51
has no request-size limit of its own, and this is the first code that sees a request's texts: the
server has received and copied them by then, but decoding (a str of up to 4 bytes per character)
and tokenizing cost more than the copy, and the answer names the limit instead of arriving late.
"""
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the contract/ copy beside this file
from contract.batching import error_response  # noqa: E402
from contract.encoder import TextEncoder  # noqa: E402
from contract.metrics import TOKENIZER, ModelMetrics  # noqa: E402
from contract.names import TEXT, TEXT_INPUTS, TOKENIZER_FILE  # noqa: E402
from contract.params import TokenizerParams  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = TokenizerParams.from_model_config(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / TOKENIZER_FILE
        self.encoder = TextEncoder.from_params(path, params)
        self.max_request_bytes = params.max_request_bytes
        self.metrics = ModelMetrics(pb_utils, args, TOKENIZER)

    def execute(self, requests):
        ids, owners, errors, cut = [], [], [None] * len(requests), 0
        for i, request in enumerate(requests):
            try:
                column = pb_utils.get_input_tensor_by_name(request, TEXT).as_numpy().reshape(-1)  # bytes
                size = sum(len(v) for v in column)
                if self.max_request_bytes and size > self.max_request_bytes:
                    errors[i] = (f"tokenizer: request {i} of this batch is too large: its '{TEXT}' input holds "
                                 f"{size:,} bytes, over the limit of {self.max_request_bytes:,} "
                                 f"(max_request_bytes); refused before decoding. Send shorter texts or fewer "
                                 f"per request: only the first {self.encoder.max_text_chars:,} characters of "
                                 f"a text are read anyway")
                    continue
                mine, cuts = self.encoder.tokenize_and_count_cuts(column)  # fails this request alone
            except Exception as e:
                errors[i] = f"tokenizer: request {i} of this batch has an unreadable '{TEXT}' input: {e}"
                continue
            ids.extend(mine)
            owners.extend([i] * len(mine))
            cut += cuts

        batch = self.encoder.pad(ids)       # one length for the whole execution
        self.metrics.tokenized((len(x) for x in ids), cut)
        responses = []
        for i in range(len(requests)):
            if errors[i] is not None:
                responses.append(error_response(pb_utils, errors[i]))
                continue
            rows = [r for r, owner in enumerate(owners) if owner == i]
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, batch[name][rows]) for name in TEXT_INPUTS]))
        return responses
