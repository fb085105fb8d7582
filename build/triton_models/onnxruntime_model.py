"""Triton Python-backend model: an ONNX classifier run by ONNX Runtime on the CPU.

The Triton server from PyPI has no onnxruntime backend, so on CPU the ONNX graph runs here.
Version folder: model.py (this file), model.onnx and contract/ (a copy of the project's contract
package: the classifier's frame, batching, session settings, parameters). Parameters: contract.params.ClassifierParams:
model_file, threads (cores to use, 0 = every core), pad_token_id, sort_chunk_rows (> 0: run each
batch as length-sorted chunks of that many rows, `threads` chunks at once, each on one thread;
0: the whole batch in one run on `threads` threads; see contract/batching.py), allow_spinning,
postprocess (with multi_label, thresholds: also return probabilities and label, as the shared
postprocess model would, from labels.txt beside config.pbtxt: one Python stub hop fewer per request).
Inputs input_ids, attention_mask, token_type_ids (int64, (B, T)) [+ features (B, k)];
output logits (B, num_labels) float32 [+ probabilities (B, num_labels) float32, label (B, 1) bytes].
"""
import sys
from pathlib import Path

import onnxruntime as ort
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the contract/ copy beside this file
from contract.names import FEATURES, LOGITS, TEXT_INPUTS  # noqa: E402
from contract.onnx_session import open_session  # noqa: E402
from contract.served_classifier import ServedClassifier  # noqa: E402


class TritonPythonModel(ServedClassifier):
    pb_utils = pb_utils
    runtime = f"ONNX Runtime {ort.__version__}"

    def load(self, path, params, intra_op_threads):
        self.session = open_session(path, intra_op_threads, allow_spinning=params.allow_spinning)
        inputs = self.session.get_inputs()
        num_features = next((int(i.shape[1]) for i in inputs if i.name == FEATURES), 0)
        expected = list(TEXT_INPUTS) + ([FEATURES] if num_features else [])
        if [i.name for i in inputs] != expected:
            raise pb_utils.TritonModelException(f"{path}: graph inputs {[i.name for i in inputs]}, "
                                                f"expected {expected}")
        return num_features

    def run(self, batch):
        return self.session.run([LOGITS], batch)[0]
