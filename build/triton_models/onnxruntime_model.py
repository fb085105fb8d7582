"""Triton Python-backend model: an ONNX classifier run by ONNX Runtime on the CPU.

The Triton server from PyPI has no onnxruntime backend, so on CPU the ONNX graph runs here.
Version folder: model.py (this file), model.onnx and contract/ (a copy of the project's contract
package: batching, session settings, parameters). Parameters: contract.params.ClassifierParams:
model_file, threads (cores to use, 0 = every core), pad_token_id, sort_chunk_rows (> 0: run each
batch as length-sorted chunks of that many rows, `threads` chunks at once, each on one thread;
0: the whole batch in one run on `threads` threads; see contract/batching.py), allow_spinning,
postprocess (with multi_label, thresholds: also return probabilities and label, as the shared
postprocess model would, from labels.txt beside config.pbtxt: one Python stub hop fewer per request).
Inputs input_ids, attention_mask, token_type_ids (int64, (B, T)) [+ features (B, k)];
output logits (B, num_labels) float32 [+ probabilities (B, num_labels) float32, label (B, 1) bytes].
"""
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the contract/ copy beside this file
from contract import batching  # noqa: E402
from contract.metrics import ModelMetrics, recording_rows  # noqa: E402
from contract.names import FEATURES, LOGITS, TEXT_INPUTS  # noqa: E402
from contract.onnx_session import open_session  # noqa: E402
from contract.params import ClassifierParams  # noqa: E402
from contract.postprocess import classifier_postprocess  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = ClassifierParams.from_model_config(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / params.model_file

        threads = params.threads or os.cpu_count() or 1
        self.chunk_rows = params.sort_chunk_rows
        self.workers, intra_op = batching.plan_threads(threads, self.chunk_rows)
        self.session = open_session(path, intra_op, allow_spinning=params.allow_spinning)

        names = [i.name for i in self.session.get_inputs()]
        self.num_features = next((int(i.shape[1]) for i in self.session.get_inputs() if i.name == FEATURES), 0)
        expected = list(TEXT_INPUTS) + ([FEATURES] if self.num_features else [])
        if names != expected:
            raise pb_utils.TritonModelException(f"{path}: graph inputs {names}, expected {expected}")
        self.pad_token_id = params.pad_token_id
        self.limits = params   # vocab_size, type_vocab_size, max_length: what batching.gather lets in
        pb_utils.Logger.log_info(f"{args['model_name']}: ONNX Runtime {ort.__version__} on {path.name}, "
                                 f"length-sorted chunks of {self.chunk_rows or 'all'} rows, "
                                 f"{self.workers} at once x {intra_op} intra-op thread(s)")
        # with `postprocess`: probabilities and label too (a bad labels.txt fails the load, naming it)
        self.post = classifier_postprocess(args["model_repository"], params)
        self.metrics = ModelMetrics.for_classifier(pb_utils, args, self.post)

    def execute(self, requests):
        def read(request, name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        batch, rows, errors = batching.gather(requests, read, self.num_features, self.pad_token_id, self.limits)
        outputs, chunks, names = {}, [], []
        if batch is not None:
            try:
                run, chunks = recording_rows(lambda b: self.session.run([LOGITS], b)[0])
                logits = batching.run_sorted_chunks(run, batch, self.chunk_rows, self.workers)
                outputs = {LOGITS: logits.astype(np.float32, copy=False)}
                if self.post is not None:
                    outputs, names = self.post.tensors(logits)
            except Exception as e:  # the whole batch failed: every request hears why
                errors = [err or f"ONNX Runtime failed on a batch of {len(batch['input_ids'])}: {e}"
                          for err in errors]
        self.metrics.executed(chunks)
        if names:
            self.metrics.predicted(names)
        return batching.respond(pb_utils, outputs, rows, errors)
