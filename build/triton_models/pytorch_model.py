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

from contract.names import FEATURES  # noqa: E402
from contract.served_classifier import ServedClassifier  # noqa: E402
from training.model import BertForSequenceClassification  # noqa: E402


class TritonPythonModel(ServedClassifier):
    pb_utils = pb_utils
    runtime = f"PyTorch {torch.__version__}"

    def load(self, path, params, intra_op_threads):
        torch.set_num_threads(intra_op_threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process
            pass
        if params.precision != "fp32":
            raise pb_utils.TritonModelException(f"precision {params.precision!r}: only fp32 runs on the CPU")
        self.model = BertForSequenceClassification.from_pretrained(path).eval()
        self.model.bert.packed = True   # dense layers on real tokens only (training/model.py Packing)
        return self.model.config.num_tabular_features

    def run(self, batch):
        x = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
        with torch.inference_mode():
            return self.model(x["input_ids"], x["attention_mask"], x["token_type_ids"],
                              features=x.get(FEATURES)).logits.float().numpy()
