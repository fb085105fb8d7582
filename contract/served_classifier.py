"""What every Python-backend classifier does around its model, written once.

A served classifier (build/triton_models/onnxruntime_model.py, pytorch_model.py) reads its
ClassifierParams, plans its threads, checks and gathers the requests of one execution into a batch
(batching.gather), runs it as length-sorted chunks side by side (batching.run_sorted_chunks),
post-processes the logits itself where its config says so, records its metrics and answers each
request. Only loading the model and running one chunk differ: a subclass defines `load` and `run`.
Triton's pb_utils module is the subclass's class attribute (this package never imports it).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from contract import batching
from contract.metrics import ModelMetrics, recording_rows
from contract.names import LOGITS
from contract.params import ClassifierParams
from contract.postprocess import classifier_postprocess


class ServedClassifier:
    pb_utils = None          # triton_python_backend_utils, set by the subclass
    runtime = "the model"    # named in errors and the load log line

    def load(self, path: Path, params: ClassifierParams, intra_op_threads: int) -> int:
        """Load the model from `path` (the version folder's model_file); -> its tabular feature count."""
        raise NotImplementedError

    def run(self, batch: dict) -> np.ndarray:
        """One chunk's arrays (input_ids, attention_mask, token_type_ids [, features]) -> logits (B, L)."""
        raise NotImplementedError

    def initialize(self, args):
        params = ClassifierParams.from_model_config(args["model_config"])
        self.params = params      # pad_token_id, and vocab_size / type_vocab_size / max_length: what gather lets in
        self.chunk_rows = params.sort_chunk_rows
        self.workers, intra_op = batching.plan_threads(params.threads or os.cpu_count() or 1, self.chunk_rows)
        path = Path(args["model_repository"]) / args["model_version"] / params.model_file
        self.num_features = self.load(path, params, intra_op)
        self.pb_utils.Logger.log_info(f"{args['model_name']}: {self.runtime} on {path.name}, length-sorted chunks "
                                      f"of {self.chunk_rows or 'all'} rows, {self.workers} at once x {intra_op} "
                                      "thread(s)")
        # with `postprocess`: probabilities and label too (a bad labels.txt fails the load, naming it)
        self.post = classifier_postprocess(args["model_repository"], params)
        self.metrics = ModelMetrics.for_classifier(self.pb_utils, args, self.post)

    def execute(self, requests):
        def read(request, name):
            t = self.pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        batch, rows, errors = batching.gather(requests, read, self.num_features, self.params.pad_token_id,
                                              self.params)
        outputs, chunks, names = {}, [], []
        if batch is not None:
            try:
                run, chunks = recording_rows(self.run)
                logits = batching.run_sorted_chunks(run, batch, self.chunk_rows, self.workers)
                outputs = {LOGITS: logits.astype(np.float32, copy=False)}
                if self.post is not None:
                    outputs, names = self.post.tensors(logits)
            except Exception as e:  # the whole batch failed: every request hears why
                errors = [err or f"{self.runtime} failed on a batch of {len(batch['input_ids'])}: {e}"
                          for err in errors]
        self.metrics.executed(chunks)
        if names:
            self.metrics.predicted(names)
        return batching.respond(self.pb_utils, outputs, rows, errors)
