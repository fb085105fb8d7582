"""Triton Python-backend model: an ONNX classifier run by ONNX Runtime on the CPU.

The Triton server from PyPI has no onnxruntime backend, so on CPU the ONNX graph runs here.
Version folder: model.py (this file), batching.py, model.onnx. Parameters (config.pbtxt):
model_file (default model.onnx), threads (intra-op threads, 0 = every core), pad_token_id,
sort_chunk_rows (> 0: run each batch as length-sorted chunks of that many rows; see batching.py).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # batching.py beside this file
import batching  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        path = version_dir / params.get("model_file", "model.onnx")

        threads = int(params.get("threads", "0") or 0) or os.cpu_count() or 1
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1          # one graph at a time; parallelism is in the ops
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # spinning worker threads would steal the cores the tokenizer and postprocess need
        spin = params.get("allow_spinning", "0")
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        names = [i.name for i in self.session.get_inputs()]
        self.num_features = next((int(i.shape[1]) for i in self.session.get_inputs()
                                  if i.name == "features"), 0)
        expected = list(batching.TEXT_INPUTS) + (["features"] if self.num_features else [])
        if names != expected:
            raise pb_utils.TritonModelException(f"{path}: graph inputs {names}, expected {expected}")
        self.pad_token_id = int(params.get("pad_token_id", "0"))
        self.chunk_rows = int(params.get("sort_chunk_rows", "0") or 0)
        pb_utils.Logger.log_info(f"{args['model_name']}: ONNX Runtime {ort.__version__} on {path.name}, "
                                 f"{threads} intra-op threads, length-sorted chunks of {self.chunk_rows or 'all'} rows")

    def execute(self, requests):
        def read(request, name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        batch, rows, errors = batching.gather(requests, read, self.num_features, self.pad_token_id)
        outputs = {}
        if batch is not None:
            try:
                logits = batching.run_sorted_chunks(lambda b: self.session.run(["logits"], b)[0],
                                                    batch, self.chunk_rows)
                outputs = {"logits": logits.astype(np.float32, copy=False)}
            except Exception as e:  # the whole batch failed: every request hears why
                errors = [err or f"ONNX Runtime failed on a batch of {len(batch['input_ids'])}: {e}"
                          for err in errors]
        return batching.respond(pb_utils, outputs, rows, errors)
