"""Triton Python-backend model `postprocess`: raw logits -> logits, probabilities, label.

Shared by every ensemble of the repository, so the CPU Python models and the GPU native
backends (TensorRT, ONNX Runtime, libtorch) all end in the same code: contract.postprocess, which
the benchmark's in-process baseline and the build's checks run too. Label names come from
labels.txt beside config.pbtxt (the same file Triton's classification extension reads).
Version folder: model.py (this file) and contract/ (a copy of the project's contract package).
Parameters: contract.params.PostprocessParams (multi_label, thresholds).
"""
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the contract/ copy beside this file
from contract.batching import error_response  # noqa: E402
from contract.metrics import POSTPROCESS, ModelMetrics  # noqa: E402
from contract.names import LABEL, LABEL_FILE, LOGITS, PROBABILITIES, RAW_LOGITS  # noqa: E402
from contract.params import PostprocessParams  # noqa: E402
from contract.postprocess import Postprocess, PostprocessError  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = PostprocessParams.from_model_config(args["model_config"])
        model_dir = Path(args["model_repository"])
        labels = [line.strip() for line in (model_dir / LABEL_FILE).read_text().splitlines() if line.strip()]
        try:
            self.post = Postprocess.from_params(labels, params)
        except PostprocessError as e:
            raise pb_utils.TritonModelException(f"{model_dir}: {e}")
        self.metrics = ModelMetrics(pb_utils, args, POSTPROCESS, labels)

    def execute(self, requests):
        responses = []
        for i, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, RAW_LOGITS).as_numpy()
            try:
                logits, probabilities, names = self.post(raw)
            except PostprocessError as e:
                responses.append(error_response(pb_utils, f"postprocess: request {i}: {RAW_LOGITS} {e}"))
                continue
            self.metrics.predicted(names)
            labels = np.array([[n.encode()] for n in names], dtype=np.object_).reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(LOGITS, logits),
                pb_utils.Tensor(PROBABILITIES, probabilities),
                pb_utils.Tensor(LABEL, labels),
            ]))
        return responses
