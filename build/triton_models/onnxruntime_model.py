"""Triton Python-backend model: an ONNX classifier run by ONNX Runtime on the CPU.

The Triton server from PyPI has no onnxruntime backend, so on CPU the ONNX graph runs here.
Version folder: model.py (this file), batching.py, onnx_session.py, model.onnx. Parameters (config.pbtxt):
model_file (default model.onnx), threads (cores to use, 0 = every core), pad_token_id,
sort_chunk_rows (> 0: run each batch as length-sorted chunks of that many rows, `threads` chunks at
once, each on one thread; 0: the whole batch in one run on `threads` threads; see batching.py),
allow_spinning (0: idle ONNX Runtime threads sleep).
Inputs input_ids, attention_mask, token_type_ids (int64, (B, T)) [+ features (B, k)];
output logits (B, num_labels) float32.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # batching.py, onnx_session.py beside this file
import batching  # noqa: E402
import contract_metrics  # noqa: E402
from onnx_session import open_session  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        path = version_dir / params.get("model_file", "model.onnx")

        threads = int(params.get("threads", "0") or 0) or os.cpu_count() or 1
        self.chunk_rows = int(params.get("sort_chunk_rows", "0") or 0)
        self.workers, intra_op = batching.plan_threads(threads, self.chunk_rows)
        self.session = open_session(path, intra_op, allow_spinning=params.get("allow_spinning", "0") == "1")

        names = [i.name for i in self.session.get_inputs()]
        self.num_features = next((int(i.shape[1]) for i in self.session.get_inputs()
                                  if i.name == "features"), 0)
        expected = list(batching.TEXT_INPUTS) + (["features"] if self.num_features else [])
        if names != expected:
            raise pb_utils.TritonModelException(f"{path}: graph inputs {names}, expected {expected}")
        self.pad_token_id = int(params.get("pad_token_id", "0"))
        pb_utils.Logger.log_info(f"{args['model_name']}: ONNX Runtime {ort.__version__} on {path.name}, "
                                 f"length-sorted chunks of {self.chunk_rows or 'all'} rows, "
                                 f"{self.workers} at once x {intra_op} intra-op thread(s)")
        self.metrics = contract_metrics.ModelMetrics(pb_utils, args, contract_metrics.CLASSIFIER)

    def execute(self, requests):
        def read(request, name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        batch, rows, errors = batching.gather(requests, read, self.num_features, self.pad_token_id)
        run, chunks = contract_metrics.recording_rows(lambda b: self.session.run(["logits"], b)[0])
        outputs = {}
        if batch is not None:
            try:
                logits = batching.run_sorted_chunks(run, batch, self.chunk_rows, self.workers)
                outputs = {"logits": logits.astype(np.float32, copy=False)}
            except Exception as e:  # the whole batch failed: every request hears why
                errors = [err or f"ONNX Runtime failed on a batch of {len(batch['input_ids'])}: {e}"
                          for err in errors]
        self.metrics.executed(chunks)
        return batching.respond(pb_utils, outputs, rows, errors)
