"""Triton Python-backend model: our from-scratch PyTorch BERT classifier on the CPU.

Version folder: model.py (this file), batching.py, checkpoint/ (config.json + model.safetensors,
written by the build with our own save_pretrained) and training/ (a snapshot of the project's
training/config.py and training/model.py taken at build time). The snapshot makes the
repository self-contained: the server needs no checkout of this project on its path, and a
later edit of training/ cannot change a model that is already deployed.
Parameters: threads (cores to use, 0 = every core), pad_token_id, precision (fp32),
sort_chunk_rows (> 0: run each batch as length-sorted chunks of that many rows, `threads` chunks at
once, each on one torch thread; 0: the whole batch at once on `threads` threads; see batching.py).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

# Idle OpenMP threads must sleep, not spin: this process shares the cores with the tokenizer,
# postprocess and the server itself, and spinning threads starved them (1.2 vs 14 texts/s for
# single-text requests through the ensemble on 2 cores). Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # batching.py and the training/ snapshot beside this file win

import batching  # noqa: E402
import contract_metrics  # noqa: E402
from training.model import BertForSequenceClassification  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("threads", "0") or 0) or os.cpu_count() or 1
        self.chunk_rows = int(params.get("sort_chunk_rows", "0") or 0)
        self.workers, intra_op = batching.plan_threads(threads, self.chunk_rows)
        torch.set_num_threads(intra_op)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process
            pass
        precision = params.get("precision", "fp32")
        if precision != "fp32":
            raise pb_utils.TritonModelException(f"precision {precision!r}: only fp32 runs on the CPU")
        folder = Path(args["model_repository"]) / args["model_version"] / params.get("model_file", "checkpoint")
        self.model = BertForSequenceClassification.from_pretrained(folder).eval()
        self.model.bert.packed = True   # dense layers on real tokens only (training/model.py Packing)
        self.num_features = self.model.config.num_tabular_features
        self.pad_token_id = int(params.get("pad_token_id", "0"))
        pb_utils.Logger.log_info(f"{args['model_name']}: torch {torch.__version__}, "
                                 f"{self.model.num_parameters():,} parameters, length-sorted chunks of "
                                 f"{self.chunk_rows or 'all'} rows, {self.workers} at once x {intra_op} thread(s)")
        self.metrics = contract_metrics.ModelMetrics(pb_utils, args, contract_metrics.CLASSIFIER)

    def execute(self, requests):
        def read(request, name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        batch, rows, errors = batching.gather(requests, read, self.num_features, self.pad_token_id)
        outputs, chunks = {}, []
        if batch is not None:
            try:
                def run(b):
                    x = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()}
                    with torch.inference_mode():
                        return self.model(x["input_ids"], x["attention_mask"], x["token_type_ids"],
                                          features=x.get("features")).logits.float().numpy()
                run, chunks = contract_metrics.recording_rows(run)
                logits = batching.run_sorted_chunks(run, batch, self.chunk_rows, self.workers)
                outputs = {"logits": logits.astype(np.float32, copy=False)}
            except Exception as e:
                errors = [err or f"PyTorch failed on a batch of {len(batch['input_ids'])}: {e}"
                          for err in errors]
        self.metrics.executed(chunks)
        return batching.respond(pb_utils, outputs, rows, errors)
