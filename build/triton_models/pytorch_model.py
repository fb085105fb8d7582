"""Triton Python-backend model: our from-scratch PyTorch BERT classifier on the CPU.

Version folder: model.py (this file), checkpoint/ (config.json + model.safetensors, written by the
build with our own save_pretrained), training/ (a snapshot of the training modules the model needs,
taken at build time) and contract/ (a copy of the project's contract package). The snapshot makes
the repository self-contained: the server needs no checkout of this project on its path, and a
later edit of training/ cannot change a model that is already deployed.
Parameters: contract.params.ClassifierParams: threads (cores to use, 0 = every core),
pad_token_id, precision (fp32), sort_chunk_rows (> 0: run each batch as length-sorted chunks of
that many rows, `threads` chunks at once, each on one torch thread; 0: the whole batch at once on
`threads` threads; see contract/batching.py), postprocess (with multi_label, thresholds: also
return probabilities and label from labels.txt beside config.pbtxt, as the shared postprocess
model would: one Python stub hop fewer per request).
"""
import os
import sys
from pathlib import Path

import numpy as np

# Idle OpenMP threads must sleep, not spin: this process shares the cores with the tokenizer,
# postprocess and the server itself, and spinning threads starve them (single-text requests
# through the ensemble slow down by an order of magnitude). Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the contract/ copy and the training/ snapshot beside this file win

from contract import batching  # noqa: E402
from contract.metrics import ModelMetrics, recording_rows  # noqa: E402
from contract.names import FEATURES, LOGITS  # noqa: E402
from contract.params import ClassifierParams  # noqa: E402
from contract.postprocess import classifier_postprocess  # noqa: E402
from training.model import BertForSequenceClassification  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = ClassifierParams.from_model_config(args["model_config"])
        threads = params.threads or os.cpu_count() or 1
        self.chunk_rows = params.sort_chunk_rows
        self.workers, intra_op = batching.plan_threads(threads, self.chunk_rows)
        torch.set_num_threads(intra_op)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process
            pass
        if params.precision != "fp32":
            raise pb_utils.TritonModelException(f"precision {params.precision!r}: only fp32 runs on the CPU")
        folder = Path(args["model_repository"]) / args["model_version"] / params.model_file
        self.model = BertForSequenceClassification.from_pretrained(folder).eval()
        self.model.bert.packed = True   # dense layers on real tokens only (training/model.py Packing)
        self.num_features = self.model.config.num_tabular_features
        self.pad_token_id = params.pad_token_id
        self.limits = params   # vocab_size, type_vocab_size, max_length: what batching.gather lets in
        pb_utils.Logger.log_info(f"{args['model_name']}: torch {torch.__version__}, "
                                 f"{self.model.num_parameters():,} parameters, length-sorted chunks of "
                                 f"{self.chunk_rows or 'all'} rows, {self.workers} at once x {intra_op} thread(s)")
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
                def run(b):
                    x = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()}
                    with torch.inference_mode():
                        return self.model(x["input_ids"], x["attention_mask"], x["token_type_ids"],
                                          features=x.get(FEATURES)).logits.float().numpy()
                run, chunks = recording_rows(run)
                logits = batching.run_sorted_chunks(run, batch, self.chunk_rows, self.workers)
                outputs = {LOGITS: logits.astype(np.float32, copy=False)}
                if self.post is not None:
                    outputs, names = self.post.tensors(logits)
            except Exception as e:
                errors = [err or f"PyTorch failed on a batch of {len(batch['input_ids'])}: {e}"
                          for err in errors]
        self.metrics.executed(chunks)
        if names:
            self.metrics.predicted(names)
        return batching.respond(pb_utils, outputs, rows, errors)
